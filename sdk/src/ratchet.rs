//! The Double Ratchet (Signal's specification) with AES-256-GCM.
//!
//! * Root KDF: HKDF-SHA256; chain KDF: HMAC-SHA256 (`docs/protocol.md` 5.1).
//! * Each message key yields an AES-256-GCM key; the 96-bit nonce is random and
//!   carried in the header; the associated data is the session's AD followed by
//!   the encoded header.
//! * The sending ratchet key pair is made once per DH step, when the first
//!   message after a received ratchet key is sent (not on every encrypt).
//! * Out-of-order messages: up to [`MAX_MESSAGE_GAP`] keys are derived ahead in
//!   one chain and kept as skipped keys, bounded per chain and in total
//!   (oldest evicted) and for [`SKIPPED_KEY_LIFETIME`].
//! * **Decrypt is transactional**: nothing changes unless the message
//!   authenticates, so a forged, replayed or too-distant message leaves the
//!   state byte-identical.

mod chain_key;
mod message;
mod message_key;
mod receiver_chain;
mod root_key;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::DecodeError;
use crate::keys::{KeyError, X25519PublicKey, diffie_hellman, generate_x25519};
use crate::secret::Secret32;
use chain_key::ChainKey;
pub use chain_key::MAX_MESSAGE_GAP;
pub use message::{HEADER_LEN, RATCHET_VERSION, TAG_LEN};
use message::{Header, Message};
pub use receiver_chain::{MAX_SKIPPED_PER_CHAIN, MAX_SKIPPED_TOTAL, SKIPPED_KEY_LIFETIME};
use receiver_chain::{ReceiverChain, SkippedKeys};
use root_key::RootKey;

/// Why a ratchet message could not be encrypted or decrypted.
///
/// Authentication failures are one opaque variant on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RatchetError {
    /// The message is malformed.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The message did not authenticate under any key this session holds.
    #[error("message failed to authenticate")]
    AuthenticationFailed,
    /// The message was already decrypted, or its key was evicted or expired.
    #[error("message already received or its key is gone")]
    DuplicateOrExpired,
    /// The message is further ahead in its chain than the receiver will derive.
    #[error("message is {gap} messages ahead, beyond the limit")]
    TooFarAhead {
        /// How far ahead it is.
        gap: u32,
    },
    /// A peer ratchet key produced a degenerate DH output.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// This side cannot send yet (a responder before its first message).
    #[error("no sending chain yet")]
    NoSendingChain,
    /// 2^32 messages were sent in one chain.
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// The plaintext is too long for AES-GCM.
    #[error("message too long")]
    MessageTooLong,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SendingChain {
    chain_key: ChainKey,
    index: u32,
}

/// The ratchet state of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ratchet {
    root_key: RootKey,
    our_secret: Secret32,
    our_public: X25519PublicKey,
    /// `None` after a new remote ratchet key arrived, until we next send.
    sending: Option<SendingChain>,
    previous_sending_length: u32,
    /// The newest remote ratchet key (`DHr`).
    remote: Option<X25519PublicKey>,
    receiving: Option<ReceiverChain>,
    skipped: SkippedKeys,
}

impl Ratchet {
    /// The initiator: knows the responder's prekey, which is the responder's
    /// first ratchet key, and performs the first DH step at once (Signal's
    /// `RatchetInitAlice`).
    pub(crate) fn initiator<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        shared_secret: Secret32,
        remote: X25519PublicKey,
    ) -> Result<Self, RatchetError> {
        let (our_secret, our_public) = generate_x25519(rng);
        let dh = diffie_hellman(&our_secret, &remote)?;
        let (root_key, chain_key) = RootKey::new(shared_secret).advance(&dh);
        Ok(Self {
            root_key,
            our_secret,
            our_public,
            sending: Some(SendingChain {
                chain_key,
                index: 0,
            }),
            previous_sending_length: 0,
            remote: Some(remote),
            receiving: None,
            skipped: SkippedKeys::default(),
        })
    }

    /// The responder: its prekey pair is its first ratchet key pair.
    pub(crate) fn responder(
        shared_secret: Secret32,
        prekey_secret: Secret32,
        prekey_public: X25519PublicKey,
    ) -> Self {
        Self {
            root_key: RootKey::new(shared_secret),
            our_secret: prekey_secret,
            our_public: prekey_public,
            sending: None,
            previous_sending_length: 0,
            remote: None,
            receiving: None,
            skipped: SkippedKeys::default(),
        }
    }

    /// Performs the pending DH step of the sending side, if any: a new ratchet
    /// key pair, mixed with the peer's newest ratchet key into the root key.
    pub(crate) fn ensure_sending_chain<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<(), RatchetError> {
        if self.sending.is_none() {
            let remote = self.remote.ok_or(RatchetError::NoSendingChain)?;
            let (secret, public) = generate_x25519(rng);
            let dh = diffie_hellman(&secret, &remote)?;
            let (root, chain_key) = self.root_key.advance(&dh);
            self.root_key = root;
            self.our_secret = secret;
            self.our_public = public;
            self.sending = Some(SendingChain {
                chain_key,
                index: 0,
            });
        }
        Ok(())
    }

    /// Drops expired skipped keys.
    pub(crate) fn prune(&mut self, now: u64) {
        self.skipped.prune(now);
    }

    /// Encrypts one message. The state advances; the caller must persist it
    /// before it releases the ciphertext.
    pub(crate) fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        associated_data: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, RatchetError> {
        self.ensure_sending_chain(rng)?;
        let previous_length = self.previous_sending_length;
        let chain = self.sending.as_mut().ok_or(RatchetError::NoSendingChain)?;
        if chain.index == u32::MAX {
            return Err(RatchetError::ChainExhausted);
        }
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let header = Header {
            ratchet_key: self.our_public,
            previous_length,
            index: chain.index,
            nonce,
        };
        let header_bytes = header.to_bytes();
        let (message_key, next) = chain.chain_key.step();
        let mut aad = Vec::with_capacity(associated_data.len() + HEADER_LEN);
        aad.extend_from_slice(associated_data);
        aad.extend_from_slice(&header_bytes);
        let ciphertext = message_key.encrypt(&nonce, &aad, plaintext)?;
        chain.chain_key = next;
        chain.index += 1;
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts one message; on any error the state is unchanged.
    pub(crate) fn decrypt(
        &mut self,
        associated_data: &[u8],
        bytes: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, RatchetError> {
        let message = Message::decode(bytes)?;
        let header = &message.header;
        let mut aad = Vec::with_capacity(associated_data.len() + HEADER_LEN);
        aad.extend_from_slice(associated_data);
        aad.extend_from_slice(message.header_bytes);
        let open =
            |key: &message_key::MessageKey| key.decrypt(&header.nonce, &aad, message.ciphertext);

        // A key skipped earlier.
        if let Some(key) = self.skipped.get(&header.ratchet_key, header.index, now) {
            let plaintext = open(key)?;
            self.skipped.remove(&header.ratchet_key, header.index);
            self.skipped.prune(now);
            return Ok(plaintext);
        }

        // The current receiving chain.
        if let Some(chain) = self
            .receiving
            .as_ref()
            .filter(|c| c.remote == header.ratchet_key)
        {
            if header.index < chain.index {
                return Err(RatchetError::DuplicateOrExpired);
            }
            let (skipped, key, next) = chain.chain_key.advance_to(chain.index, header.index)?;
            let plaintext = open(&key)?;
            let remote = chain.remote;
            if let Some(chain) = self.receiving.as_mut() {
                chain.chain_key = next;
                chain.index = header.index.saturating_add(1);
            }
            self.skipped.insert(remote, skipped, now);
            return Ok(plaintext);
        }

        // A message on a chain we have moved past, whose key is gone.
        if self.remote == Some(header.ratchet_key) {
            return Err(RatchetError::DuplicateOrExpired);
        }

        // A new remote ratchet key: a DH step, computed aside until it authenticates.
        // Keys of the previous chain still missing. If more are missing than
        // the cap, those messages are given up rather than the session.
        let old_chain_rest = match &self.receiving {
            Some(chain) => chain
                .chain_key
                .skip_to(chain.index, header.previous_length)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let dh = diffie_hellman(&self.our_secret, &header.ratchet_key)?;
        let (root, chain_key) = self.root_key.advance(&dh);
        let (skipped, key, next) = chain_key.advance_to(0, header.index)?;
        let plaintext = open(&key)?;

        if let Some(old) = self.receiving.take() {
            self.skipped.insert(old.remote, old_chain_rest, now);
        }
        self.skipped.insert(header.ratchet_key, skipped, now);
        self.root_key = root;
        self.receiving = Some(ReceiverChain {
            remote: header.ratchet_key,
            chain_key: next,
            index: header.index.saturating_add(1),
        });
        self.remote = Some(header.ratchet_key);
        if let Some(sending) = self.sending.take() {
            self.previous_sending_length = sending.index;
        }
        Ok(plaintext)
    }

    /// The message key the next encrypt will use, if the sending chain exists.
    #[cfg(test)]
    pub(crate) fn next_message_key(&self) -> Option<Secret32> {
        self.sending
            .as_ref()
            .map(|s| s.chain_key.step().0.as_secret().clone())
    }

    #[cfg(test)]
    pub(crate) fn root_key(&self) -> &Secret32 {
        self.root_key.as_secret()
    }

    /// Whether the next encrypt performs a DH step.
    #[cfg(test)]
    pub(crate) fn will_step_on_send(&self) -> bool {
        self.sending.is_none()
    }

    #[cfg(test)]
    pub(crate) fn skipped_len(&self) -> usize {
        self.skipped.len()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    const AD: &[u8] = b"associated data";

    pub(crate) fn pair(seed: u8) -> (Ratchet, Ratchet, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let sk = Secret32::new([seed; 32]);
        let (bob_secret, bob_public) = generate_x25519(&mut rng);
        let alice = Ratchet::initiator(&mut rng, sk.clone(), bob_public).unwrap();
        let bob = Ratchet::responder(sk, bob_secret, bob_public);
        (alice, bob, rng)
    }

    fn snapshot(r: &Ratchet) -> Vec<u8> {
        postcard::to_allocvec(r).unwrap()
    }

    #[test]
    fn round_trip_with_dh_steps() {
        let (mut alice, mut bob, mut rng) = pair(1);
        assert!(
            bob.encrypt(&mut rng, AD, b"x").is_err(),
            "responder cannot send first"
        );
        for round in 0..4u8 {
            let m1 = alice.encrypt(&mut rng, AD, &[round; 10]).unwrap();
            let m2 = alice.encrypt(&mut rng, AD, &[round; 1]).unwrap();
            assert_eq!(bob.decrypt(AD, &m2, 0).unwrap(), vec![round; 1]);
            assert_eq!(bob.decrypt(AD, &m1, 0).unwrap(), vec![round; 10]);
            assert!(bob.will_step_on_send());
            assert!(!alice.will_step_on_send());
            let r = bob.encrypt(&mut rng, AD, b"reply").unwrap();
            assert!(!bob.will_step_on_send());
            assert_eq!(alice.decrypt(AD, &r, 0).unwrap(), b"reply");
        }
    }

    #[test]
    fn failures_leave_the_state_unchanged() {
        let (mut alice, mut bob, mut rng) = pair(2);
        let m = alice.encrypt(&mut rng, AD, b"hello").unwrap();
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x40;
            let before = snapshot(&bob);
            assert!(bob.decrypt(AD, &bad, 0).is_err(), "byte {i}");
            assert_eq!(before, snapshot(&bob), "byte {i}");
        }
        assert!(bob.decrypt(b"other ad", &m, 0).is_err());
        assert_eq!(bob.decrypt(AD, &m, 0).unwrap(), b"hello");
        let before = snapshot(&bob);
        assert_eq!(
            bob.decrypt(AD, &m, 0),
            Err(RatchetError::DuplicateOrExpired)
        );
        assert_eq!(before, snapshot(&bob));
    }

    #[test]
    fn gaps_beyond_the_limit_are_refused_without_change() {
        let (mut alice, mut bob, mut rng) = pair(3);
        let first = alice.encrypt(&mut rng, AD, b"0").unwrap();
        bob.decrypt(AD, &first, 0).unwrap();
        let mut last = Vec::new();
        for _ in 0..=MAX_MESSAGE_GAP + 1 {
            last = alice.encrypt(&mut rng, AD, b"n").unwrap();
        }
        let before = snapshot(&bob);
        assert!(matches!(
            bob.decrypt(AD, &last, 0),
            Err(RatchetError::TooFarAhead { .. })
        ));
        assert_eq!(before, snapshot(&bob));
    }

    #[test]
    fn a_gap_of_exactly_the_limit_is_accepted() {
        let (mut alice, mut bob, mut rng) = pair(7);
        let first = alice.encrypt(&mut rng, AD, b"0").unwrap();
        bob.decrypt(AD, &first, 0).unwrap();
        let sent: Vec<Vec<u8>> = (0..=MAX_MESSAGE_GAP)
            .map(|i| alice.encrypt(&mut rng, AD, &i.to_be_bytes()).unwrap())
            .collect();
        let last = MAX_MESSAGE_GAP as usize;
        assert_eq!(
            bob.decrypt(AD, &sent[last], 0).unwrap(),
            MAX_MESSAGE_GAP.to_be_bytes()
        );
        assert_eq!(bob.skipped_len(), MAX_MESSAGE_GAP as usize);
        // Skipped messages still open, once each.
        for i in [0u32, 500, 1000, 1999] {
            assert_eq!(
                bob.decrypt(AD, &sent[i as usize], 0).unwrap(),
                i.to_be_bytes()
            );
            assert!(bob.decrypt(AD, &sent[i as usize], 0).is_err());
        }
    }

    #[test]
    fn more_lost_messages_than_the_cap_on_a_finished_chain_do_not_break_the_session() {
        let (mut alice, mut bob, mut rng) = pair(8);
        let first = alice.encrypt(&mut rng, AD, b"0").unwrap();
        bob.decrypt(AD, &first, 0).unwrap();
        for _ in 0..=MAX_MESSAGE_GAP {
            alice.encrypt(&mut rng, AD, b"lost").unwrap();
        }
        let reply = bob.encrypt(&mut rng, AD, b"still there?").unwrap();
        alice.decrypt(AD, &reply, 0).unwrap();
        // A new chain whose PN is more than the cap past what Bob has seen.
        let next = alice.encrypt(&mut rng, AD, b"yes").unwrap();
        assert_eq!(bob.decrypt(AD, &next, 0).unwrap(), b"yes");
        assert_eq!(bob.skipped_len(), 0, "the lost messages' keys are not kept");
        let more = alice.encrypt(&mut rng, AD, b"and more").unwrap();
        assert_eq!(bob.decrypt(AD, &more, 0).unwrap(), b"and more");
    }

    #[test]
    fn skipped_keys_across_a_dh_step() {
        let (mut alice, mut bob, mut rng) = pair(4);
        let a0 = alice.encrypt(&mut rng, AD, b"a0").unwrap();
        let a1 = alice.encrypt(&mut rng, AD, b"a1").unwrap();
        bob.decrypt(AD, &a0, 0).unwrap();
        let b0 = bob.encrypt(&mut rng, AD, b"b0").unwrap();
        alice.decrypt(AD, &b0, 0).unwrap();
        let a2 = alice.encrypt(&mut rng, AD, b"a2").unwrap();
        // a2 is on a new chain; a1 must be kept as skipped from the old one.
        assert_eq!(bob.decrypt(AD, &a2, 0).unwrap(), b"a2");
        assert_eq!(bob.skipped_len(), 1);
        assert_eq!(bob.decrypt(AD, &a1, 0).unwrap(), b"a1");
        assert_eq!(bob.skipped_len(), 0);
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let (mut alice, _bob, mut rng) = pair(6);
        alice.encrypt(&mut rng, AD, b"x").unwrap();
        let printed = format!("{alice:?}");
        let root = alice.root_key().as_bytes();
        let as_hex: String = root.iter().map(|b| format!("{b:02x}")).collect();
        let as_list = format!("{:?}", &root[..4]);
        assert!(!printed.contains(&as_hex), "{printed}");
        assert!(
            !printed.contains(&as_list[1..as_list.len() - 1]),
            "{printed}"
        );
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn state_round_trips_through_postcard() {
        let (mut alice, _bob, mut rng) = pair(5);
        alice.encrypt(&mut rng, AD, b"x").unwrap();
        let bytes = snapshot(&alice);
        let back: Ratchet = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, alice);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Step {
            Send(bool),
            Deliver(usize),
            Drop(usize),
            Replay(usize),
            Tamper(usize, usize, u8),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => any::<bool>().prop_map(Step::Send),
                4 => any::<usize>().prop_map(Step::Deliver),
                1 => any::<usize>().prop_map(Step::Drop),
                1 => any::<usize>().prop_map(Step::Replay),
                2 => (any::<usize>(), any::<usize>(), 1..=255u8).prop_map(|(i, a, x)| Step::Tamper(i, a, x)),
            ]
        }

        proptest! {
            /// In the ratchet itself (no store around it): any failed decrypt —
            /// replay or tampered byte — leaves the serialized state identical,
            /// and every delivered message decrypts once to its plaintext.
            #[test]
            fn failed_decrypts_never_change_the_ratchet(seed in any::<u8>(), steps in prop::collection::vec(step(), 1..80)) {
                let (mut alice, mut bob, mut rng) = pair(seed);
                let mut bob_can_send = false;
                let mut flight: Vec<(bool, Vec<u8>, Vec<u8>)> = Vec::new();
                let mut done: Vec<(bool, Vec<u8>)> = Vec::new();
                let mut n = 0u32;
                for s in steps {
                    match s {
                        Step::Send(from_alice) => {
                            if !from_alice && !bob_can_send { continue; }
                            n += 1;
                            let pt = n.to_be_bytes().to_vec();
                            let sender = if from_alice { &mut alice } else { &mut bob };
                            flight.push((from_alice, sender.encrypt(&mut rng, AD, &pt).unwrap(), pt));
                        }
                        Step::Deliver(i) if !flight.is_empty() => {
                            let (from_alice, wire, pt) = flight.remove(i % flight.len());
                            let receiver = if from_alice { &mut bob } else { &mut alice };
                            prop_assert_eq!(receiver.decrypt(AD, &wire, 0).unwrap(), pt);
                            bob_can_send |= from_alice;
                            done.push((from_alice, wire));
                        }
                        Step::Drop(i) if !flight.is_empty() => { flight.remove(i % flight.len()); }
                        Step::Replay(i) if !done.is_empty() => {
                            let (from_alice, wire) = done[i % done.len()].clone();
                            let receiver = if from_alice { &mut bob } else { &mut alice };
                            let before = snapshot(receiver);
                            prop_assert!(receiver.decrypt(AD, &wire, 0).is_err());
                            prop_assert_eq!(before, snapshot(receiver));
                        }
                        Step::Tamper(i, at, x) if !flight.is_empty() => {
                            let (from_alice, wire, _) = &flight[i % flight.len()];
                            let mut wire = wire.clone();
                            let at = at % wire.len();
                            wire[at] ^= x;
                            let receiver = if *from_alice { &mut bob } else { &mut alice };
                            let before = snapshot(receiver);
                            prop_assert!(receiver.decrypt(AD, &wire, 0).is_err());
                            prop_assert_eq!(before, snapshot(receiver));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
