//! Join proofs: how a device shows a relay that it belongs to a mailbox's group without
//! revealing any secret.
//!
//! The proof is an Ed25519 signature by the epoch's mailbox signing key over
//! `"zerok join v1" ‖ relay_id ‖ device_id ‖ welcome nonce`. The relay checks it against the
//! mailbox key the device presents and derives the mailbox id from that key, so knowing a
//! mailbox id is not enough, and a proof is bound to one relay, one device and one connection
//! (the nonce is fresh per `Welcome`).

use super::keys::MailboxSigner;
use ed25519_dalek::{Signature, VerifyingKey};
use zerok_messages::{DeviceId, MailboxKey, Signature64};

/// Domain separation prefix of the join transcript.
const JOIN_DOMAIN: &[u8] = b"zerok join v1";

/// The bytes a join proof signs.
pub fn join_transcript(relay_id: &DeviceId, device_id: &DeviceId, nonce: &[u8; 32]) -> Vec<u8> {
    let mut transcript = Vec::with_capacity(JOIN_DOMAIN.len() + 96);
    transcript.extend_from_slice(JOIN_DOMAIN);
    transcript.extend_from_slice(relay_id.as_bytes());
    transcript.extend_from_slice(device_id.as_bytes());
    transcript.extend_from_slice(nonce);
    transcript
}

/// Sign a join proof for `device_id` on the relay `relay_id` that sent `nonce`.
pub fn sign_join(
    keys: &impl AsRef<MailboxSigner>,
    relay_id: &DeviceId,
    device_id: &DeviceId,
    nonce: &[u8; 32],
) -> Signature64 {
    keys.as_ref()
        .sign(&join_transcript(relay_id, device_id, nonce))
}

/// Check a join proof. Strict verification: malleable or small-order keys are refused.
pub fn verify_join(
    mailbox_key: &MailboxKey,
    proof: &Signature64,
    relay_id: &DeviceId,
    device_id: &DeviceId,
    nonce: &[u8; 32],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(mailbox_key.as_bytes()) else {
        return false;
    };
    let signature = Signature::from_bytes(&proof.0);
    key.verify_strict(&join_transcript(relay_id, device_id, nonce), &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::GroupSecret;
    use zerok_messages::Epoch;

    #[test]
    fn valid_proof_verifies_and_every_binding_holds() {
        let keys = GroupSecret::from_bytes([3; 32]).epoch_keys(Epoch(0));
        let other_keys = GroupSecret::from_bytes([4; 32]).epoch_keys(Epoch(0));
        let relay = DeviceId([1; 32]);
        let device = DeviceId([2; 32]);
        let nonce = [9u8; 32];
        let proof = sign_join(&keys, &relay, &device, &nonce);
        let key = keys.mailbox_key();
        assert!(verify_join(&key, &proof, &relay, &device, &nonce));
        // Another relay, device, nonce or mailbox: refused.
        assert!(!verify_join(
            &key,
            &proof,
            &DeviceId([5; 32]),
            &device,
            &nonce
        ));
        assert!(!verify_join(
            &key,
            &proof,
            &relay,
            &DeviceId([5; 32]),
            &nonce
        ));
        assert!(!verify_join(&key, &proof, &relay, &device, &[8; 32]));
        assert!(!verify_join(
            &other_keys.mailbox_key(),
            &proof,
            &relay,
            &device,
            &nonce
        ));
        // A proof from another group's key for the right transcript: refused.
        let forged = sign_join(&other_keys, &relay, &device, &nonce);
        assert!(!verify_join(&key, &forged, &relay, &device, &nonce));
        // A tampered signature: refused.
        let mut tampered = proof;
        tampered.0[10] ^= 1;
        assert!(!verify_join(&key, &tampered, &relay, &device, &nonce));
        // Garbage key bytes: refused, no panic.
        assert!(!verify_join(
            &MailboxKey([0xff; 32]),
            &proof,
            &relay,
            &device,
            &nonce
        ));
    }
}
