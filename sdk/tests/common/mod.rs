//! Two devices simulated deterministically: a seeded RNG and virtual time.

#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::store::{MemoryStore, StorageKey, Store};
use hush::{PreKeyBundle, SessionManager};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

pub(crate) const T0: u64 = 1_700_000_000;

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(crate) fn device<S: Store>(
    store: S,
    key: &StorageKey,
    name: &str,
    device: u32,
    rng: &mut ChaCha20Rng,
) -> SessionManager<S> {
    SessionManager::create(
        store,
        key,
        IdentityKeyPair::generate(rng),
        DeviceAuthKeyPair::generate(rng),
        UserId::new(name).unwrap(),
        DeviceId(device),
        Default::default(),
        rng,
        T0,
    )
    .unwrap()
}

/// A bundle of `m`'s device as a server would hand it out, with a fresh one-time prekey.
pub(crate) fn bundle_with_one_time<S: Store>(
    m: &mut SessionManager<S>,
    rng: &mut ChaCha20Rng,
) -> PreKeyBundle {
    let otk = m.generate_one_time_prekeys(rng, 1).unwrap();
    PreKeyBundle {
        one_time_prekey: Some(otk[0]),
        ..m.bundle().unwrap()
    }
}

pub(crate) fn addr(name: &str, device: u32) -> DeviceAddress {
    DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(device))
}

/// Alice and Bob on memory stores, each with its storage key.
pub(crate) struct Pair {
    pub(crate) alice: SessionManager<MemoryStore>,
    pub(crate) bob: SessionManager<MemoryStore>,
    pub(crate) alice_key: StorageKey,
    pub(crate) bob_key: StorageKey,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) now: u64,
}

impl Pair {
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let alice_key = StorageKey::generate(&mut rng);
        let bob_key = StorageKey::generate(&mut rng);
        let alice = device(MemoryStore::new(), &alice_key, "alice", 1, &mut rng);
        let bob = device(MemoryStore::new(), &bob_key, "bob", 1, &mut rng);
        Self {
            alice,
            bob,
            alice_key,
            bob_key,
            rng,
            now: T0,
        }
    }

    /// Alice starts a session with Bob from a bundle with a one-time prekey.
    pub(crate) fn connected(seed: u64) -> Self {
        let mut p = Self::new(seed);
        let bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
        p.alice.start_session(&mut p.rng, &bundle, p.now).unwrap();
        p
    }

    pub(crate) fn a_to_b(&mut self, text: &[u8]) -> Vec<u8> {
        let bob = self.bob.address().clone();
        self.alice
            .encrypt(&mut self.rng, &bob, text, self.now)
            .unwrap()
    }

    pub(crate) fn b_to_a(&mut self, text: &[u8]) -> Vec<u8> {
        let alice = self.alice.address().clone();
        self.bob
            .encrypt(&mut self.rng, &alice, text, self.now)
            .unwrap()
    }

    pub(crate) fn bob_reads(&mut self, wire: &[u8]) -> Result<Vec<u8>, hush::Error> {
        let alice = self.alice.address().clone();
        self.bob
            .decrypt(&mut self.rng, &alice, wire, self.now)
            .map(|d| d.plaintext)
    }

    pub(crate) fn alice_reads(&mut self, wire: &[u8]) -> Result<Vec<u8>, hush::Error> {
        let bob = self.bob.address().clone();
        self.alice
            .decrypt(&mut self.rng, &bob, wire, self.now)
            .map(|d| d.plaintext)
    }

    /// Closes and reopens both devices from their stores.
    pub(crate) fn reopen(self) -> Self {
        let Self {
            alice,
            bob,
            alice_key,
            bob_key,
            rng,
            now,
        } = self;
        let alice = SessionManager::open(alice.into_store(), &alice_key).unwrap();
        let bob = SessionManager::open(bob.into_store(), &bob_key).unwrap();
        Self {
            alice,
            bob,
            alice_key,
            bob_key,
            rng,
            now,
        }
    }
}
