//! The `Link` conformance suite (`zerok_actors::link::conformance`) over turmoil's simulated
//! TCP: a relay host listening, the test client dialling it; plus what only a simulated
//! network can show (a partition breaks a dial, a crashed host resets its links).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use zerok_actors::link::conformance::{
    abort, connected, half_close, large_frames, ordered_both_ways,
};
use zerok_actors::link::{Dialer, Link, LinkError};
use zerok_chaos::net::{SimDialer, listen, relay_addr};
use zerok_messages::DeviceId;

const RELAY: DeviceId = DeviceId([1; 32]);
const CLIENT: DeviceId = DeviceId([2; 32]);

/// What a receiver got.
type Received = Result<Option<bytes::Bytes>, LinkError>;

type Body = fn(Link, Link) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Run `body` on a connected pair: the listener lives on host "relay", its accepted link is
/// handed to the test client (links are channels, pumped by tasks of their own host).
fn run_pair(body: Body) {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(1)
        .build();
    let accepted: Arc<Mutex<Option<Link>>> = Arc::default();
    let slot = Arc::clone(&accepted);
    sim.host("relay", move || {
        let slot = Arc::clone(&slot);
        async move {
            let mut listener = listen(RELAY).await?;
            while let Some(link) = listener.accept().await {
                *slot.lock().unwrap() = Some(link);
            }
            Ok(())
        }
    });
    sim.client("client", async move {
        let dialer = SimDialer::new(CLIENT);
        let addr = relay_addr("relay", RELAY);
        let (a, mut listener_side) = {
            // The suite's `connected` needs the listener; here the relay host owns it, so
            // the same steps run against the accepted link it hands over.
            let a = dialer.dial(&addr).await.unwrap();
            a.sender
                .send(bytes::Bytes::from_static(b"first"))
                .await
                .unwrap();
            let b = loop {
                if let Some(link) = accepted.lock().unwrap().take() {
                    break link;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            (a, b)
        };
        assert_eq!(
            listener_side.receiver.recv().await.unwrap().unwrap(),
            bytes::Bytes::from_static(b"first")
        );
        assert_eq!(a.peer, RELAY);
        assert_eq!(listener_side.peer, CLIENT);
        body(a, listener_side).await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn turmoil_ordered_both_ways() {
    run_pair(|a, b| Box::pin(ordered_both_ways(a, b)));
}

#[test]
fn turmoil_large_frames() {
    run_pair(|a, b| Box::pin(large_frames(a, b)));
}

#[test]
fn turmoil_half_close() {
    run_pair(|a, b| Box::pin(half_close(a, b)));
}

#[test]
fn turmoil_abort() {
    run_pair(|a, b| Box::pin(abort(a, b)));
}

#[test]
fn turmoil_both_ends_in_one_host_pass_the_suite_helper() {
    // The suite's own `connected` (listener and dialer in one host).
    let mut sim = turmoil::Builder::new().rng_seed(2).build();
    sim.client("both", async {
        let mut listener = listen(RELAY).await?;
        let addr = relay_addr("both", RELAY);
        let (a, b) = connected(&SimDialer::new(CLIENT), &mut listener, &addr).await;
        ordered_both_ways(a, b).await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn turmoil_wrong_peer_is_refused_and_a_dead_address_fails() {
    let mut sim = turmoil::Builder::new().rng_seed(2).build();
    sim.host("relay", || async {
        let mut listener = listen(RELAY).await?;
        while listener.accept().await.is_some() {}
        Ok(())
    });
    sim.client("client", async {
        let dialer = SimDialer::new(CLIENT);
        let mut addr = relay_addr("relay", RELAY);
        addr.id = DeviceId([9; 32]);
        let err = dialer.dial(&addr).await.unwrap_err();
        assert!(matches!(err, LinkError::WrongPeer { .. }), "{err:?}");
        let nobody = relay_addr("client", RELAY);
        let err = dialer.dial(&nobody).await.unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::Unreachable { .. } | LinkError::Timeout { .. }
            ),
            "{err:?}"
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn turmoil_a_crashed_host_resets_its_links() {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .rng_seed(3)
        .build();
    sim.host("relay", || async {
        let mut listener = listen(RELAY).await?;
        let mut held = Vec::new();
        while let Some(link) = listener.accept().await {
            held.push(link);
        }
        Ok(())
    });
    let outcome: Arc<Mutex<Option<Received>>> = Arc::default();
    let seen = Arc::clone(&outcome);
    let linked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_linked = Arc::clone(&linked);
    sim.client("client", async move {
        let mut link = SimDialer::new(CLIENT)
            .dial(&relay_addr("relay", RELAY))
            .await
            .unwrap();
        link.sender
            .send(bytes::Bytes::from_static(b"hi"))
            .await
            .unwrap();
        is_linked.store(true, std::sync::atomic::Ordering::SeqCst);
        let got = tokio::time::timeout(Duration::from_secs(30), link.receiver.recv())
            .await
            .unwrap();
        *seen.lock().unwrap() = Some(got);
        Ok(())
    });
    // Run until the link is up (the dial's id exchange done), then crash the relay host.
    while !linked.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(sim.elapsed() < Duration::from_secs(30), "the link came up");
        sim.step().unwrap();
    }
    sim.crash("relay");
    sim.run().unwrap();
    let got = outcome
        .lock()
        .unwrap()
        .take()
        .expect("the client saw the end");
    assert!(got.is_err(), "a crash is not a clean end: {got:?}");
}
