//! The conformance suite every `Link` transport passes (in-memory, iroh QUIC, the chaos
//! harness's simulated TCP): each body takes a connected pair, dialer side first, and panics
//! when the transport breaks the seam's rules (see the module doc of [`super`]).

#![allow(clippy::unwrap_used)]

use super::{Dialer, Link, LinkError, LinkListener};
use bytes::Bytes;
use std::time::Duration;
use zerok_messages::RelayAddr;
use zerok_messages::wire::FRAME_BYTES_MAX;

/// Longest wait for one step of a body.
pub const BOUND: Duration = Duration::from_secs(20);

/// A connected pair: (dialer side, listener side). The dialer speaks first.
pub async fn connected(
    dialer: &dyn Dialer,
    listener: &mut LinkListener,
    addr: &RelayAddr,
) -> (Link, Link) {
    let a = dialer.dial(addr).await.unwrap();
    a.sender.send(Bytes::from_static(b"first")).await.unwrap();
    let mut b = tokio::time::timeout(BOUND, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.receiver.recv().await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
    assert_eq!(a.peer, listener.local_id());
    assert_eq!(b.peer, dialer.local_id());
    (a, b)
}

/// 1,000 frames of varied sizes each way at once arrive complete and in order.
pub async fn ordered_both_ways(mut a: Link, mut b: Link) {
    let frame = |i: usize| Bytes::from(vec![(i % 251) as u8; 1 + (i * 37) % 5000]);
    let sender = a.sender.clone();
    let writer = tokio::spawn(async move {
        for i in 0..1000 {
            sender.send(frame(i)).await.unwrap();
        }
    });
    let back = b.sender.clone();
    let echo = tokio::spawn(async move {
        for i in 0..1000 {
            back.send(frame(i)).await.unwrap();
        }
    });
    for i in 0..1000 {
        assert_eq!(
            b.receiver.recv().await.unwrap().unwrap(),
            frame(i),
            "frame {i} to b"
        );
        assert_eq!(
            a.receiver.recv().await.unwrap().unwrap(),
            frame(i),
            "frame {i} to a"
        );
    }
    writer.await.unwrap();
    echo.await.unwrap();
}

/// A frame of `FRAME_BYTES_MAX` bytes passes; one byte more is refused by the sender.
pub async fn large_frames(a: Link, mut b: Link) {
    let max = Bytes::from(vec![7u8; FRAME_BYTES_MAX]);
    a.sender.send(max.clone()).await.unwrap();
    assert_eq!(b.receiver.recv().await.unwrap().unwrap(), max);
    let over = Bytes::from(vec![7u8; FRAME_BYTES_MAX + 1]);
    assert!(matches!(
        a.sender.send(over).await,
        Err(LinkError::TooLarge { .. })
    ));
}

/// Finishing the sender: the peer reads every queued frame, then the end; the other way
/// keeps working.
pub async fn half_close(a: Link, mut b: Link) {
    let Link {
        sender,
        receiver: mut a_receiver,
        ..
    } = a;
    for i in 0..10u8 {
        sender.send(Bytes::from(vec![i])).await.unwrap();
    }
    sender.finish();
    for i in 0..10u8 {
        assert_eq!(
            b.receiver.recv().await.unwrap().unwrap(),
            Bytes::from(vec![i])
        );
    }
    assert_eq!(
        tokio::time::timeout(BOUND, b.receiver.recv())
            .await
            .unwrap()
            .unwrap(),
        None
    );
    b.sender
        .send(Bytes::from_static(b"still open"))
        .await
        .unwrap();
    assert_eq!(
        a_receiver.recv().await.unwrap().unwrap(),
        Bytes::from_static(b"still open")
    );
}

/// An abort reaches the peer as an error, not a clean end.
pub async fn abort(a: Link, mut b: Link) {
    a.sender.abort("test abort");
    let result = tokio::time::timeout(BOUND, b.receiver.recv())
        .await
        .unwrap();
    assert!(result.is_err(), "an abort is not a clean end: {result:?}");
}
