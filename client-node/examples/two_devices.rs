//! Two devices syncing through a relay, in one process.
//!
//! Start a relay, then run this with its address:
//!
//! ```sh
//! cargo run --release -p zerok-relay &
//! cargo run -p zerok-client --example two_devices -- "$(cat zerok-relay-data/relay.addr)"
//! ```
//!
//! The laptop creates a group and invites the phone; the laptop pushes three notes; the
//! phone receives them live, decrypted and verified, and prints them.

use std::time::Duration;
use zerok_client::{Client, ClientConfig, Event, NewSecret};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let relay = std::env::args()
        .nth(1)
        .ok_or("usage: two_devices RELAY_ADDR (the text of the relay's relay.addr)")?
        .trim()
        .parse()?;
    let homes = std::env::temp_dir().join(format!("zerok-example-{}", std::process::id()));

    let laptop = Client::start(ClientConfig::new(homes.join("laptop"))).await?;
    let phone = Client::start(ClientConfig::new(homes.join("phone"))).await?;

    let group = laptop
        .create_group("notes", NewSecret::Random, vec![relay])
        .await?;
    let invite = laptop.invite(group, Duration::from_secs(600)).await?;
    phone.join(&invite, None).await?;
    let mut events = phone.events().ok_or("events are taken once")?;

    for note in ["buy milk", "call mum", "water the plants"] {
        let receipt = laptop.push(group, note.as_bytes().to_vec()).await?;
        println!(
            "laptop: pushed {note:?}, durable on {} relay(s)",
            receipt.acked_by.len()
        );
    }

    let mut received = 0;
    while received < 3 {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await? {
            Some(Event::Received { seq, payload, .. }) => {
                received += 1;
                println!("phone: #{seq} {}", String::from_utf8_lossy(&payload));
            }
            Some(other) => println!("phone: {other:?}"),
            None => break,
        }
    }
    laptop.shutdown().await;
    phone.shutdown().await;
    let _ = std::fs::remove_dir_all(&homes);
    Ok(())
}
