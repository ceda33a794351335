//! The receiving chain and the bounded store of skipped message keys.

use serde::{Deserialize, Serialize};

use super::chain_key::ChainKey;
use super::message_key::MessageKey;
use crate::keys::X25519PublicKey;

/// Skipped keys kept for one chain, at most.
pub const MAX_SKIPPED_PER_CHAIN: usize = 2_000;
/// Skipped keys kept for one session, at most (oldest evicted first).
pub const MAX_SKIPPED_TOTAL: usize = 4_000;
/// How long a skipped key is kept: the server's default queue lifetime (30 days).
pub const SKIPPED_KEY_LIFETIME: u64 = 30 * 24 * 3600;

/// The chain the peer currently sends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiverChain {
    pub(crate) remote: X25519PublicKey,
    pub(crate) chain_key: ChainKey,
    /// The next message number expected.
    pub(crate) index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SkippedKey {
    index: u32,
    stored_at: u64,
    key: MessageKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SkippedChain {
    remote: X25519PublicKey,
    /// Ascending by index.
    keys: Vec<SkippedKey>,
}

/// Message keys of messages not yet received, oldest chain first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SkippedKeys {
    chains: Vec<SkippedChain>,
}

impl SkippedKeys {
    fn is_live(key: &SkippedKey, now: u64) -> bool {
        now.saturating_sub(key.stored_at) <= SKIPPED_KEY_LIFETIME
    }

    /// The key of message `index` of chain `remote`, if kept and not expired.
    pub(crate) fn get(
        &self,
        remote: &X25519PublicKey,
        index: u32,
        now: u64,
    ) -> Option<&MessageKey> {
        let chain = self.chains.iter().find(|c| &c.remote == remote)?;
        let pos = chain.keys.binary_search_by_key(&index, |k| k.index).ok()?;
        let key = &chain.keys[pos];
        Self::is_live(key, now).then_some(&key.key)
    }

    pub(crate) fn remove(&mut self, remote: &X25519PublicKey, index: u32) {
        if let Some(ci) = self.chains.iter().position(|c| &c.remote == remote) {
            let chain = &mut self.chains[ci];
            if let Ok(pos) = chain.keys.binary_search_by_key(&index, |k| k.index) {
                chain.keys.remove(pos);
            }
            if chain.keys.is_empty() {
                self.chains.remove(ci);
            }
        }
    }

    /// Adds keys (ascending indices, all above those already kept for the chain),
    /// then enforces expiry and the caps.
    pub(crate) fn insert(
        &mut self,
        remote: X25519PublicKey,
        keys: Vec<(u32, MessageKey)>,
        now: u64,
    ) {
        if !keys.is_empty() {
            let new = keys.into_iter().map(|(index, key)| SkippedKey {
                index,
                stored_at: now,
                key,
            });
            match self.chains.iter().position(|c| c.remote == remote) {
                Some(ci) => {
                    // Keep the most recently touched chain last.
                    let mut chain = self.chains.remove(ci);
                    chain.keys.extend(new);
                    self.chains.push(chain);
                }
                None => self.chains.push(SkippedChain {
                    remote,
                    keys: new.collect(),
                }),
            }
        }
        self.prune(now);
    }

    /// Drops expired keys and enforces the caps.
    pub(crate) fn prune(&mut self, now: u64) {
        for chain in &mut self.chains {
            chain.keys.retain(|k| Self::is_live(k, now));
            if chain.keys.len() > MAX_SKIPPED_PER_CHAIN {
                let excess = chain.keys.len() - MAX_SKIPPED_PER_CHAIN;
                chain.keys.drain(..excess);
            }
        }
        self.chains.retain(|c| !c.keys.is_empty());
        let mut total: usize = self.chains.iter().map(|c| c.keys.len()).sum();
        while total > MAX_SKIPPED_TOTAL {
            let Some(oldest) = self.chains.first_mut() else {
                break;
            };
            let excess = (total - MAX_SKIPPED_TOTAL).min(oldest.keys.len());
            oldest.keys.drain(..excess);
            total -= excess;
            if oldest.keys.is_empty() {
                self.chains.remove(0);
            }
        }
    }

    /// Number of keys kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chains.iter().map(|c| c.keys.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret32;

    fn key(i: u8) -> X25519PublicKey {
        X25519PublicKey::from_secret(&Secret32::new([i; 32]))
    }

    fn mks(from: u32, to: u32) -> Vec<(u32, MessageKey)> {
        (from..to)
            .map(|i| (i, MessageKey::new(Secret32::new([i as u8; 32]))))
            .collect()
    }

    #[test]
    fn caps_evict_the_oldest_keys() {
        let mut s = SkippedKeys::default();
        s.insert(key(1), mks(0, 2_000), 0);
        s.insert(key(1), mks(2_000, 2_010), 0);
        assert_eq!(s.len(), MAX_SKIPPED_PER_CHAIN);
        assert!(s.get(&key(1), 9, 0).is_none());
        assert!(s.get(&key(1), 10, 0).is_some());
        s.insert(key(2), mks(0, 2_000), 0);
        s.insert(key(3), mks(0, 500), 0);
        assert_eq!(s.len(), MAX_SKIPPED_TOTAL);
        assert!(
            s.get(&key(1), 10, 0).is_none(),
            "oldest chain loses keys first"
        );
        assert!(s.get(&key(3), 0, 0).is_some());
    }

    #[test]
    fn keys_expire_after_their_lifetime() {
        let mut s = SkippedKeys::default();
        s.insert(key(1), mks(0, 3), 100);
        assert!(s.get(&key(1), 1, 100 + SKIPPED_KEY_LIFETIME).is_some());
        assert!(s.get(&key(1), 1, 101 + SKIPPED_KEY_LIFETIME).is_none());
        s.insert(key(2), Vec::new(), 101 + SKIPPED_KEY_LIFETIME);
        assert_eq!(s.len(), 0);
    }
}
