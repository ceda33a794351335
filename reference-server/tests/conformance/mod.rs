//! The conformance suite of [`Storage`]: every backend passes the same
//! cases. A driver (`tests/storage_*.rs`) implements [`TestDb`] and calls
//! [`conformance_tests!`], which declares one test per case, each on a fresh
//! database.
//!
//! (A `mod.rs` rather than `conformance.rs`: a file directly in `tests/`
//! would be built as a test crate of its own.)

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use hush::SessionManager;
use hush::keys::{
    DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, OneTimePreKey, PqPreKeyKind,
    PreKeyId, SignedPqPreKey, SignedPreKey, UserId,
};
use hush::session::SessionMessage;
use hush::store::{MemoryStore, StorageKey};
use hush::wire::envelope::{Envelope, MAX_SESSION_MESSAGE_LEN};
use hush::wire::protocol::{BlobId, Delivery, EnvelopeId, LinkToken};
use hush_server::storage::{
    AckOutcome, BlobRecord, NewEnvelope, QueuedEnvelope, Storage, StorageError, TakenPreKeys,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// A fresh database of one backend, as the drivers provide it.
pub(crate) trait TestDb: Sized {
    /// The backend.
    type Storage: Storage;

    /// A new, empty, migrated database; `None` when the backend is not
    /// available here (the driver has said why).
    fn fresh() -> impl Future<Output = Option<Self>>;

    /// The storage over it.
    fn storage(&self) -> Arc<Self::Storage>;

    /// Closes the storage and opens the same database again.
    fn reopen(self) -> impl Future<Output = Self>;

    /// Closes the storage and deletes the database.
    fn close(self) -> impl Future<Output = ()>;
}

/// The schema version the embedded migrations reach.
pub(crate) const SCHEMA_VERSION: u32 = 3;

/// Declares one `#[tokio::test]` per conformance case for the [`TestDb`]
/// `$db`.
macro_rules! conformance_tests {
    ($db:ty) => {
        conformance_tests!(@cases $db;
            accounts_are_created_once,
            user_ids_are_compared_byte_for_byte,
            link_permissions_work_once,
            link_permissions_expire,
            link_permissions_belong_to_one_account,
            link_permissions_die_with_their_device,
            the_device_limit_keeps_the_permission,
            device_ids_are_never_reused,
            certificates_are_stored,
            removing_a_device_removes_its_prekeys_queue_and_push_token,
            replacing_the_identity_keeps_one_device,
            deleting_an_account_removes_everything,
            publishing_prekeys_replaces_and_adds,
            prekeys_are_taken_in_order_then_only_the_last_resort,
            publishing_pq_prekeys_replaces_and_adds,
            pq_prekeys_are_taken_in_order_then_only_the_pq_last_resort,
            enqueue_is_all_or_nothing,
            the_queue_keeps_order_across_batches_and_pages,
            large_envelopes_round_trip,
            ack_removes_only_own_envelopes,
            queue_depth_counts_every_queue,
            purging_envelopes_goes_by_server_time,
            expired_link_permissions_are_purged,
            push_tokens_are_set_and_cleared,
            blobs_are_indexed_and_purged_by_age,
            migrate_is_idempotent,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_takers_never_share_a_one_time_prekey() {
            let Some(db) = <$db as conformance::TestDb>::fresh().await else {
                return;
            };
            conformance::concurrent_takers_never_share_a_one_time_prekey(
                conformance::TestDb::storage(&db),
            )
            .await;
            conformance::TestDb::close(db).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_takers_never_share_a_pq_one_time_prekey() {
            let Some(db) = <$db as conformance::TestDb>::fresh().await else {
                return;
            };
            conformance::concurrent_takers_never_share_a_pq_one_time_prekey(
                conformance::TestDb::storage(&db),
            )
            .await;
            conformance::TestDb::close(db).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn a_reader_paging_during_concurrent_enqueues_misses_nothing() {
            let Some(db) = <$db as conformance::TestDb>::fresh().await else {
                return;
            };
            conformance::a_reader_paging_during_concurrent_enqueues_misses_nothing(
                conformance::TestDb::storage(&db),
            )
            .await;
            conformance::TestDb::close(db).await;
        }

        #[tokio::test]
        async fn data_survives_reopening() {
            let Some(db) = <$db as conformance::TestDb>::fresh().await else {
                return;
            };
            let db = conformance::data_survives_reopening(db).await;
            conformance::TestDb::close(db).await;
        }
    };
    (@cases $db:ty; $($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(db) = <$db as conformance::TestDb>::fresh().await else {
                return;
            };
            conformance::$case(&*conformance::TestDb::storage(&db)).await;
            conformance::TestDb::close(db).await;
        }
    )*};
}

/// The time the cases run at.
pub(crate) const NOW: u64 = 1_700_000_000;

/// How long the link permissions of the cases last.
const LINK_TTL: u64 = 300;

/// Deterministic key material and ids.
pub(crate) struct Keys {
    rng: ChaCha20Rng,
}

impl Keys {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    pub(crate) fn token(&mut self) -> LinkToken {
        LinkToken::random(&mut self.rng)
    }

    pub(crate) fn envelope_id(&mut self) -> EnvelopeId {
        EnvelopeId::random(&mut self.rng)
    }

    pub(crate) fn blob_id(&mut self) -> BlobId {
        BlobId::random(&mut self.rng)
    }

    pub(crate) fn identity(&mut self) -> IdentityKeyPair {
        IdentityKeyPair::generate(&mut self.rng)
    }

    /// A sealed-looking envelope from `sender` with `len` random message bytes.
    pub(crate) fn envelope(&mut self, sender: &DeviceAddress, len: usize) -> Envelope {
        let mut message = vec![0u8; len.max(1)];
        self.rng.fill_bytes(&mut message);
        message[0] = SessionMessage::TAG_NORMAL;
        Envelope::new(sender.clone(), message).unwrap()
    }

    /// An envelope for `recipient` from `sender`, accepted at `server_time`.
    pub(crate) fn new_envelope(
        &mut self,
        recipient: &DeviceAddress,
        sender: &DeviceAddress,
        server_time: u64,
    ) -> NewEnvelope {
        let len = 16 + (self.rng.next_u32() % 200) as usize;
        NewEnvelope {
            recipient: recipient.clone(),
            delivery: Delivery {
                id: self.envelope_id(),
                sender: sender.clone(),
                server_time,
                envelope: self.envelope(sender, len),
            },
        }
    }

    /// The prekeys a real device of `account` would publish as `device`:
    /// its signed, last-resort and PQ last-resort prekeys, `one_time`
    /// one-time prekeys and as many PQ one-time prekeys.
    pub(crate) fn prekeys(
        &mut self,
        account: &Account,
        device: DeviceId,
        one_time: usize,
    ) -> PreKeys {
        self.prekeys_with(account, device, one_time, one_time)
    }

    /// [`Self::prekeys`] with `pq_one_time` PQ one-time prekeys (their ids
    /// follow the one-time prekeys').
    pub(crate) fn prekeys_with(
        &mut self,
        account: &Account,
        device: DeviceId,
        one_time: usize,
        pq_one_time: usize,
    ) -> PreKeys {
        let identity = IdentityKeyPair::from_seed_bytes(&account.identity.to_seed_bytes());
        let mut manager = SessionManager::create(
            MemoryStore::new(),
            &StorageKey::generate(&mut self.rng),
            identity,
            DeviceAuthKeyPair::generate(&mut self.rng),
            account.user.clone(),
            device,
            Default::default(),
            &mut self.rng,
            NOW,
        )
        .unwrap();
        let bundle = manager.bundle().unwrap();
        let one_time = manager
            .generate_one_time_prekeys(&mut self.rng, one_time)
            .unwrap();
        let pq_one_time = manager
            .generate_pq_one_time_prekeys(&mut self.rng, pq_one_time, NOW)
            .unwrap();
        PreKeys {
            signed: bundle.signed_prekey,
            last_resort: bundle.last_resort_prekey,
            one_time,
            pq_last_resort: bundle.pq_prekey.unwrap(),
            pq_one_time,
            certificate: manager.certificate().clone(),
        }
    }
}

/// What a device publishes.
pub(crate) struct PreKeys {
    pub(crate) signed: SignedPreKey,
    pub(crate) last_resort: SignedPreKey,
    pub(crate) one_time: Vec<OneTimePreKey>,
    pub(crate) pq_last_resort: SignedPqPreKey,
    pub(crate) pq_one_time: Vec<SignedPqPreKey>,
    pub(crate) certificate: hush::keys::DeviceCertificate,
}

/// An account made by [`account`].
pub(crate) struct Account {
    pub(crate) user: UserId,
    pub(crate) identity: IdentityKeyPair,
}

impl Account {
    pub(crate) fn device(&self, id: u32) -> DeviceAddress {
        DeviceAddress::new(self.user.clone(), DeviceId(id))
    }
}

pub(crate) fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// Creates the account `name` with its first device.
pub(crate) async fn account<S: Storage>(s: &S, keys: &mut Keys, name: &str) -> Account {
    let user = user(name);
    let identity = keys.identity();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng);
    let device = s
        .create_account(&user, &identity.public_key(), &auth.public_key(), NOW)
        .await
        .unwrap();
    assert_eq!(device, DeviceId(1));
    Account { user, identity }
}

/// Links one more device to `account`.
pub(crate) async fn link<S: Storage>(s: &S, keys: &mut Keys, account: &Account) -> DeviceId {
    let token = keys.token();
    // Asked for by a device the account still has.
    let issuer = s.devices(&account.user).await.unwrap()[0].device;
    s.add_link_permission(&account.device(issuer.0), &token, NOW + LINK_TTL)
        .await
        .unwrap();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    s.add_linked_device(&account.user, &token, &auth, 100, NOW)
        .await
        .unwrap()
}

/// Publishes a full set of prekeys for `device`: `one_time` one-time
/// prekeys and as many PQ one-time prekeys.
pub(crate) async fn publish<S: Storage>(
    s: &S,
    keys: &mut Keys,
    account: &Account,
    device: u32,
    one_time: usize,
) -> PreKeys {
    let prekeys = keys.prekeys(account, DeviceId(device), one_time);
    publish_all(s, &account.device(device), &prekeys).await;
    prekeys
}

/// Publishes every prekey of `prekeys` for `device`.
pub(crate) async fn publish_all<S: Storage>(s: &S, device: &DeviceAddress, prekeys: &PreKeys) {
    s.publish_prekeys(
        device,
        Some(&prekeys.signed),
        Some(&prekeys.last_resort),
        &prekeys.one_time,
    )
    .await
    .unwrap();
    s.publish_pq_prekeys(device, Some(&prekeys.pq_last_resort), &prekeys.pq_one_time)
        .await
        .unwrap();
}

async fn device_ids<S: Storage>(s: &S, user: &UserId) -> Vec<u32> {
    s.devices(user)
        .await
        .unwrap()
        .iter()
        .map(|d| d.device.0)
        .collect()
}

async fn queued_ids<S: Storage>(s: &S, recipient: &DeviceAddress) -> Vec<EnvelopeId> {
    s.queued(recipient, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.delivery.id)
        .collect()
}

fn ids(envelopes: &[NewEnvelope]) -> Vec<EnvelopeId> {
    envelopes.iter().map(|e| e.delivery.id).collect()
}

/// An account is created once, with device 1, and its identity and device
/// read back.
pub(crate) async fn accounts_are_created_once<S: Storage>(s: &S) {
    let mut keys = Keys::new(1);
    let alice = user("alice");
    let identity = keys.identity().public_key();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert_eq!(s.identity(&alice).await.unwrap(), None);
    assert_eq!(s.devices(&alice).await.unwrap(), vec![]);
    let device = s
        .create_account(&alice, &identity, &auth, NOW)
        .await
        .unwrap();
    assert_eq!(device, DeviceId(1));
    assert_eq!(s.identity(&alice).await.unwrap(), Some(identity));

    let other = keys.identity().public_key();
    assert!(matches!(
        s.create_account(&alice, &other, &auth, NOW + 1).await,
        Err(StorageError::UserTaken)
    ));
    assert_eq!(s.identity(&alice).await.unwrap(), Some(identity));

    let record = s
        .device(&DeviceAddress::new(alice.clone(), DeviceId(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.device, DeviceId(1));
    assert_eq!(record.auth_key, auth);
    assert_eq!(record.certificate, None);
    assert_eq!(record.created_at, NOW);
    assert_eq!(s.devices(&alice).await.unwrap(), vec![record]);
    assert_eq!(
        s.device(&DeviceAddress::new(alice.clone(), DeviceId(2)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.device(&DeviceAddress::new(user("bob"), DeviceId(1)))
            .await
            .unwrap(),
        None
    );
}

/// User ids are exact: case and Unicode normalisation are not folded, and
/// the longest id works.
pub(crate) async fn user_ids_are_compared_byte_for_byte<S: Storage>(s: &S) {
    let mut keys = Keys::new(2);
    let longest = "é".repeat(UserId::MAX_LEN / 2) + "x";
    assert_eq!(longest.len(), UserId::MAX_LEN);
    let names = [
        "alice",
        "Alice",
        "ALICE",
        "caf\u{e9}",
        "cafe\u{301}",
        "alice ",
        longest.as_str(),
    ];
    let mut identities = Vec::new();
    for name in names {
        let account = account(s, &mut keys, name).await;
        identities.push(account.identity.public_key());
    }
    for (name, identity) in names.iter().zip(&identities) {
        assert_eq!(s.identity(&user(name)).await.unwrap(), Some(*identity));
        assert_eq!(device_ids(s, &user(name)).await, vec![1]);
    }
}

/// A link permission registers one device, once.
pub(crate) async fn link_permissions_work_once<S: Storage>(s: &S) {
    let mut keys = Keys::new(3);
    let token = keys.token();
    assert!(matches!(
        s.add_link_permission(
            &DeviceAddress::new(user("nobody"), DeviceId(1)),
            &token,
            NOW + LINK_TTL
        )
        .await,
        Err(StorageError::NoSuchDevice)
    ));
    let alice = account(s, &mut keys, "alice").await;
    s.add_link_permission(&alice.device(1), &token, NOW + LINK_TTL)
        .await
        .unwrap();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    let device = s
        .add_linked_device(&alice.user, &token, &auth, 6, NOW)
        .await
        .unwrap();
    assert_eq!(device, DeviceId(2));
    let record = s.device(&alice.device(2)).await.unwrap().unwrap();
    assert_eq!(record.auth_key, auth);
    assert_eq!(record.created_at, NOW);
    assert_eq!(record.certificate, None);

    let again = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert!(matches!(
        s.add_linked_device(&alice.user, &token, &again, 6, NOW)
            .await,
        Err(StorageError::PermissionInvalid)
    ));
    let unknown = keys.token();
    assert!(matches!(
        s.add_linked_device(&alice.user, &unknown, &again, 6, NOW)
            .await,
        Err(StorageError::PermissionInvalid)
    ));
    assert_eq!(device_ids(s, &alice.user).await, vec![1, 2]);
}

/// A permission works while `now < expires_at`, and a refused attempt
/// leaves it in place.
pub(crate) async fn link_permissions_expire<S: Storage>(s: &S) {
    let mut keys = Keys::new(4);
    let alice = account(s, &mut keys, "alice").await;
    let token = keys.token();
    let expires_at = NOW + LINK_TTL;
    s.add_link_permission(&alice.device(1), &token, expires_at)
        .await
        .unwrap();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    for now in [expires_at, expires_at + 1] {
        assert!(matches!(
            s.add_linked_device(&alice.user, &token, &auth, 6, now)
                .await,
            Err(StorageError::PermissionInvalid)
        ));
    }
    assert_eq!(device_ids(s, &alice.user).await, vec![1]);
    let device = s
        .add_linked_device(&alice.user, &token, &auth, 6, expires_at - 1)
        .await
        .unwrap();
    assert_eq!(device, DeviceId(2));
}

/// A permission of one account does not link a device to another.
pub(crate) async fn link_permissions_belong_to_one_account<S: Storage>(s: &S) {
    let mut keys = Keys::new(5);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let token = keys.token();
    s.add_link_permission(&alice.device(1), &token, NOW + LINK_TTL)
        .await
        .unwrap();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert!(matches!(
        s.add_linked_device(&bob.user, &token, &auth, 6, NOW).await,
        Err(StorageError::PermissionInvalid)
    ));
    assert_eq!(device_ids(s, &bob.user).await, vec![1]);
    // The refused attempt did not spend it.
    assert_eq!(
        s.add_linked_device(&alice.user, &token, &auth, 6, NOW)
            .await
            .unwrap(),
        DeviceId(2)
    );
}

/// A permission is revoked with the device that asked for it, and a device
/// that is gone cannot ask.
pub(crate) async fn link_permissions_die_with_their_device<S: Storage>(s: &S) {
    let mut keys = Keys::new(11);
    let alice = account(s, &mut keys, "alice").await;
    let second = link(s, &mut keys, &alice).await;
    let token = keys.token();
    s.add_link_permission(&alice.device(second.0), &token, NOW + LINK_TTL)
        .await
        .unwrap();
    assert!(s.remove_device(&alice.device(second.0)).await.unwrap());
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert!(matches!(
        s.add_linked_device(&alice.user, &token, &auth, 6, NOW)
            .await,
        Err(StorageError::PermissionInvalid)
    ));
    assert!(matches!(
        s.add_link_permission(&alice.device(second.0), &keys.token(), NOW + LINK_TTL)
            .await,
        Err(StorageError::NoSuchDevice)
    ));
}

/// At the device limit a link is refused and the permission kept.
pub(crate) async fn the_device_limit_keeps_the_permission<S: Storage>(s: &S) {
    let mut keys = Keys::new(6);
    let alice = account(s, &mut keys, "alice").await;
    link(s, &mut keys, &alice).await;
    let token = keys.token();
    s.add_link_permission(&alice.device(1), &token, NOW + LINK_TTL)
        .await
        .unwrap();
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    for max in [1, 2] {
        match s
            .add_linked_device(&alice.user, &token, &auth, max, NOW)
            .await
        {
            Err(StorageError::DeviceLimit(n)) => assert_eq!(n, max),
            other => panic!("expected DeviceLimit, got {other:?}"),
        }
    }
    assert_eq!(device_ids(s, &alice.user).await, vec![1, 2]);
    assert_eq!(
        s.add_linked_device(&alice.user, &token, &auth, 3, NOW)
            .await
            .unwrap(),
        DeviceId(3)
    );
}

/// A removed device's id is never given to another device of the account.
pub(crate) async fn device_ids_are_never_reused<S: Storage>(s: &S) {
    let mut keys = Keys::new(7);
    let alice = account(s, &mut keys, "alice").await;
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(2));
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(3));
    assert!(s.remove_device(&alice.device(3)).await.unwrap());
    assert!(!s.remove_device(&alice.device(3)).await.unwrap());
    assert!(!s.remove_device(&alice.device(9)).await.unwrap());
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(4));
    assert!(s.remove_device(&alice.device(2)).await.unwrap());
    assert!(s.remove_device(&alice.device(4)).await.unwrap());
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(5));
    assert_eq!(device_ids(s, &alice.user).await, vec![1, 5]);
}

/// A certificate is stored on its device, and can be stored again.
pub(crate) async fn certificates_are_stored<S: Storage>(s: &S) {
    let mut keys = Keys::new(8);
    let alice = account(s, &mut keys, "alice").await;
    let certificate = keys.prekeys(&alice, DeviceId(1), 0).certificate;
    s.set_certificate(&alice.device(1), &certificate)
        .await
        .unwrap();
    // The same value again (MySQL reports no changed rows for it).
    s.set_certificate(&alice.device(1), &certificate)
        .await
        .unwrap();
    let record = s.device(&alice.device(1)).await.unwrap().unwrap();
    assert_eq!(record.certificate, Some(certificate.clone()));
    assert!(matches!(
        s.set_certificate(&alice.device(2), &certificate).await,
        Err(StorageError::NoSuchDevice)
    ));
    assert!(matches!(
        s.set_certificate(&DeviceAddress::new(user("bob"), DeviceId(1)), &certificate)
            .await,
        Err(StorageError::NoSuchDevice)
    ));
}

/// Removing a device takes its prekeys, queue and push token with it and
/// leaves the other devices alone.
pub(crate) async fn removing_a_device_removes_its_prekeys_queue_and_push_token<S: Storage>(s: &S) {
    let mut keys = Keys::new(9);
    let alice = account(s, &mut keys, "alice").await;
    link(s, &mut keys, &alice).await;
    let (one, two) = (alice.device(1), alice.device(2));
    for device in [1, 2] {
        publish(s, &mut keys, &alice, device, 3).await;
    }
    s.set_push_token(&one, Some("token-1")).await.unwrap();
    s.set_push_token(&two, Some("token-2")).await.unwrap();
    let batch = vec![
        keys.new_envelope(&one, &two, NOW),
        keys.new_envelope(&two, &one, NOW),
        keys.new_envelope(&two, &one, NOW),
    ];
    s.enqueue(&batch).await.unwrap();

    assert!(s.remove_device(&two).await.unwrap());
    assert_eq!(s.device(&two).await.unwrap(), None);
    assert_eq!(s.take_prekeys(&two).await.unwrap(), None);
    assert_eq!(s.one_time_prekey_count(&two).await.unwrap(), 0);
    assert_eq!(s.pq_one_time_prekey_count(&two).await.unwrap(), 0);
    assert_eq!(s.queued(&two, 0, 100).await.unwrap(), vec![]);
    assert_eq!(s.push_token(&two).await.unwrap(), None);
    assert_eq!(s.queue_depth().await.unwrap(), 1);

    assert_eq!(s.one_time_prekey_count(&one).await.unwrap(), 3);
    assert_eq!(s.pq_one_time_prekey_count(&one).await.unwrap(), 3);
    assert_eq!(queued_ids(s, &one).await, vec![batch[0].delivery.id]);
    assert_eq!(
        s.push_token(&one).await.unwrap().as_deref(),
        Some("token-1")
    );
    assert_eq!(device_ids(s, &alice.user).await, vec![1]);
}

/// A new identity leaves one device, without the certificate and prekeys
/// the old identity signed, and revokes pending link permissions.
pub(crate) async fn replacing_the_identity_keeps_one_device<S: Storage>(s: &S) {
    let mut keys = Keys::new(10);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    link(s, &mut keys, &alice).await;
    link(s, &mut keys, &alice).await;
    for device in [1, 2, 3] {
        let prekeys = publish(s, &mut keys, &alice, device, 2).await;
        s.set_certificate(&alice.device(device), &prekeys.certificate)
            .await
            .unwrap();
        s.set_push_token(&alice.device(device), Some(&format!("token-{device}")))
            .await
            .unwrap();
    }
    publish(s, &mut keys, &bob, 1, 2).await;
    let keep = alice.device(2);
    let queued = keys.new_envelope(&keep, &bob.device(1), NOW);
    let lost = keys.new_envelope(&alice.device(3), &bob.device(1), NOW);
    s.enqueue(&[queued.clone(), lost]).await.unwrap();
    let pending = keys.token();
    s.add_link_permission(&alice.device(1), &pending, NOW + LINK_TTL)
        .await
        .unwrap();
    let old_identity = alice.identity.public_key();
    let new_identity = keys.identity().public_key();

    assert!(matches!(
        s.replace_identity(&alice.device(7), &new_identity).await,
        Err(StorageError::NoSuchDevice)
    ));
    assert_eq!(s.identity(&alice.user).await.unwrap(), Some(old_identity));
    assert_eq!(device_ids(s, &alice.user).await, vec![1, 2, 3]);

    let removed = s.replace_identity(&keep, &new_identity).await.unwrap();
    assert_eq!(removed, vec![DeviceId(1), DeviceId(3)]);
    assert_eq!(s.identity(&alice.user).await.unwrap(), Some(new_identity));
    let devices = s.devices(&alice.user).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, DeviceId(2));
    assert_eq!(devices[0].certificate, None);
    assert_eq!(s.take_prekeys(&keep).await.unwrap(), None);
    assert_eq!(s.one_time_prekey_count(&keep).await.unwrap(), 0);
    assert_eq!(s.pq_one_time_prekey_count(&keep).await.unwrap(), 0);
    // The kept device's queue and push token stay.
    assert_eq!(queued_ids(s, &keep).await, vec![queued.delivery.id]);
    assert_eq!(
        s.push_token(&keep).await.unwrap().as_deref(),
        Some("token-2")
    );
    assert_eq!(s.queue_depth().await.unwrap(), 1);
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert!(matches!(
        s.add_linked_device(&alice.user, &pending, &auth, 6, NOW)
            .await,
        Err(StorageError::PermissionInvalid)
    ));
    // New devices continue after the highest id ever given.
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(4));
    // The PQ last-resort prekey went too: new classical prekeys alone
    // come without one.
    let fresh = keys.prekeys(&alice, DeviceId(2), 0);
    s.publish_prekeys(&keep, Some(&fresh.signed), Some(&fresh.last_resort), &[])
        .await
        .unwrap();
    let taken = s.take_prekeys(&keep).await.unwrap().unwrap();
    assert_eq!((taken.pq_last_resort, taken.pq_one_time), (None, None));
    // Bob is untouched.
    let bobs = s.take_prekeys(&bob.device(1)).await.unwrap().unwrap();
    assert!(bobs.pq_one_time.is_some() && bobs.pq_last_resort.is_some());
    assert_eq!(
        s.identity(&bob.user).await.unwrap(),
        Some(bob.identity.public_key())
    );
}

/// Deleting an account removes its devices, prekeys, queues, permissions and
/// blob index rows, returns those blobs, and frees the user id.
pub(crate) async fn deleting_an_account_removes_everything<S: Storage>(s: &S) {
    let mut keys = Keys::new(11);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    link(s, &mut keys, &alice).await;
    for device in [1, 2] {
        publish(s, &mut keys, &alice, device, 4).await;
        s.set_push_token(&alice.device(device), Some("token"))
            .await
            .unwrap();
    }
    let batch = vec![
        keys.new_envelope(&alice.device(1), &bob.device(1), NOW),
        keys.new_envelope(&alice.device(2), &bob.device(1), NOW),
        keys.new_envelope(&bob.device(1), &alice.device(1), NOW),
    ];
    s.enqueue(&batch).await.unwrap();
    let pending = keys.token();
    s.add_link_permission(&alice.device(1), &pending, NOW + LINK_TTL)
        .await
        .unwrap();
    let mut alices_blobs = BTreeSet::new();
    for (device, owner) in [(1, &alice), (2, &alice), (1, &bob), (2, &alice)] {
        let blob = BlobRecord {
            blob: keys.blob_id(),
            owner: owner.device(device),
            size: 1000,
            created_at: NOW,
        };
        s.add_blob(&blob).await.unwrap();
        if owner.user == alice.user {
            alices_blobs.insert(blob.blob);
        }
    }
    let bobs_blob = {
        let blob = BlobRecord {
            blob: keys.blob_id(),
            owner: bob.device(1),
            size: 5,
            created_at: NOW,
        };
        s.add_blob(&blob).await.unwrap();
        blob
    };

    let deleted = s.delete_account(&alice.user).await.unwrap();
    assert_eq!(deleted.len(), alices_blobs.len());
    assert_eq!(deleted.into_iter().collect::<BTreeSet<_>>(), alices_blobs);
    for blob in &alices_blobs {
        assert_eq!(s.blob(blob).await.unwrap(), None);
    }
    assert_eq!(s.blob(&bobs_blob.blob).await.unwrap(), Some(bobs_blob));
    assert_eq!(s.identity(&alice.user).await.unwrap(), None);
    assert_eq!(s.devices(&alice.user).await.unwrap(), vec![]);
    for device in [1, 2] {
        let address = alice.device(device);
        assert_eq!(s.take_prekeys(&address).await.unwrap(), None);
        assert_eq!(s.one_time_prekey_count(&address).await.unwrap(), 0);
        assert_eq!(s.pq_one_time_prekey_count(&address).await.unwrap(), 0);
        assert_eq!(s.queued(&address, 0, 100).await.unwrap(), vec![]);
        assert_eq!(s.push_token(&address).await.unwrap(), None);
    }
    assert_eq!(s.queue_depth().await.unwrap(), 1);
    assert_eq!(
        queued_ids(s, &bob.device(1)).await,
        vec![batch[2].delivery.id]
    );
    assert_eq!(
        s.delete_account(&alice.user).await.unwrap(),
        Vec::<BlobId>::new()
    );

    // The id is free again, for a new account that starts from device 1
    // and cannot use the old account's permission.
    let again = account(s, &mut keys, "alice").await;
    assert_eq!(device_ids(s, &again.user).await, vec![1]);
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    assert!(matches!(
        s.add_linked_device(&again.user, &pending, &auth, 6, NOW)
            .await,
        Err(StorageError::PermissionInvalid)
    ));
    assert_eq!(link(s, &mut keys, &again).await, DeviceId(2));
}

/// Publishing replaces the signed and last-resort prekeys that are given and
/// adds one-time prekeys, ignoring ids the device already has.
pub(crate) async fn publishing_prekeys_replaces_and_adds<S: Storage>(s: &S) {
    let mut keys = Keys::new(12);
    let alice = account(s, &mut keys, "alice").await;
    let device = alice.device(1);
    let first = keys.prekeys(&alice, DeviceId(1), 5);
    let second = keys.prekeys(&alice, DeviceId(1), 5);
    assert_ne!(first.signed, second.signed);
    assert!(matches!(
        s.publish_prekeys(&alice.device(2), Some(&first.signed), None, &[])
            .await,
        Err(StorageError::NoSuchDevice)
    ));

    s.publish_prekeys(&device, Some(&first.signed), None, &[])
        .await
        .unwrap();
    // Not yet a last-resort prekey: nothing to hand out.
    assert_eq!(s.take_prekeys(&device).await.unwrap(), None);
    s.publish_prekeys(&device, None, Some(&first.last_resort), &first.one_time)
        .await
        .unwrap();
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 5);

    // The first batch has ids 4..=8 (1 to 3 are the signed, last-resort and
    // PQ last-resort prekeys); the second reuses 6..=8 with other keys and
    // adds 9 and 10.
    let mut first_ids: Vec<u32> = first.one_time.iter().map(|k| k.id.0).collect();
    first_ids.sort_unstable();
    assert_eq!(first_ids, vec![4, 5, 6, 7, 8]);
    let renumbered: Vec<OneTimePreKey> = second
        .one_time
        .iter()
        .zip(6..)
        .map(|(k, id)| OneTimePreKey {
            id: PreKeyId(id),
            key: k.key,
        })
        .collect();
    s.publish_prekeys(&device, Some(&second.signed), None, &renumbered)
        .await
        .unwrap();
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 7);

    // A batch repeating an id within itself: the first one counts.
    let extra = keys.prekeys(&alice, DeviceId(1), 2).one_time;
    let repeated = [
        OneTimePreKey {
            id: PreKeyId(100),
            key: extra[0].key,
        },
        OneTimePreKey {
            id: PreKeyId(100),
            key: extra[1].key,
        },
    ];
    s.publish_prekeys(&device, None, None, &repeated)
        .await
        .unwrap();
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 8);

    let mut taken = Vec::new();
    for _ in 0..8 {
        let t = s.take_prekeys(&device).await.unwrap().unwrap();
        // The signed prekey was replaced, the last-resort one kept.
        assert_eq!(t.signed, second.signed);
        assert_eq!(t.last_resort, first.last_resort);
        taken.push(t.one_time.unwrap());
    }
    let mut expected = first.one_time.clone();
    expected.sort_by_key(|k| k.id);
    expected.extend_from_slice(&renumbered[3..]);
    expected.push(repeated[0]);
    assert_eq!(taken, expected);
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 0);
}

/// One-time prekeys go out lowest id first, each once; then the signed and
/// last-resort prekeys alone.
pub(crate) async fn prekeys_are_taken_in_order_then_only_the_last_resort<S: Storage>(s: &S) {
    let mut keys = Keys::new(13);
    let alice = account(s, &mut keys, "alice").await;
    let device = alice.device(1);
    assert_eq!(s.take_prekeys(&device).await.unwrap(), None);
    assert_eq!(s.take_prekeys(&alice.device(2)).await.unwrap(), None);
    let prekeys = keys.prekeys(&alice, DeviceId(1), 3);
    let shuffled: Vec<OneTimePreKey> = [(2, 50), (0, 7), (1, 300)]
        .into_iter()
        .map(|(i, id)| OneTimePreKey {
            id: PreKeyId(id),
            key: prekeys.one_time[i].key,
        })
        .collect();
    s.publish_prekeys(&device, None, None, &shuffled)
        .await
        .unwrap();
    // One-time prekeys without a signed prekey are not handed out.
    assert_eq!(s.take_prekeys(&device).await.unwrap(), None);
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 3);
    s.publish_prekeys(
        &device,
        Some(&prekeys.signed),
        Some(&prekeys.last_resort),
        &[],
    )
    .await
    .unwrap();
    for (left, id) in [(2, 7), (1, 50), (0, 300)] {
        let taken = s.take_prekeys(&device).await.unwrap().unwrap();
        assert_eq!(
            taken,
            TakenPreKeys {
                signed: prekeys.signed.clone(),
                last_resort: prekeys.last_resort.clone(),
                one_time: Some(*shuffled.iter().find(|k| k.id.0 == id).unwrap()),
                // No PQ prekeys were published.
                pq_last_resort: None,
                pq_one_time: None,
            }
        );
        assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), left);
    }
    for _ in 0..2 {
        let taken = s.take_prekeys(&device).await.unwrap().unwrap();
        assert_eq!(taken.signed, prekeys.signed);
        assert_eq!(taken.last_resort, prekeys.last_resort);
        assert_eq!(taken.one_time, None);
    }
}

/// 100 concurrent takers share 50 one-time prekeys: each key goes to exactly
/// one of them, and the other 50 get the last resort.
pub(crate) async fn concurrent_takers_never_share_a_one_time_prekey<S: Storage>(s: Arc<S>) {
    let mut keys = Keys::new(14);
    let alice = account(&*s, &mut keys, "alice").await;
    let prekeys = publish(&*s, &mut keys, &alice, 1, 50).await;
    let device = alice.device(1);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = Arc::clone(&s);
            let device = device.clone();
            tokio::spawn(async move { s.take_prekeys(&device).await })
        })
        .collect();
    let mut handed_out = Vec::new();
    let mut without = 0;
    for task in tasks {
        let taken = task.await.unwrap().unwrap().unwrap();
        assert_eq!(taken.signed, prekeys.signed);
        assert_eq!(taken.last_resort, prekeys.last_resort);
        match taken.one_time {
            Some(key) => handed_out.push(key),
            None => without += 1,
        }
    }
    assert_eq!(handed_out.len(), 50);
    assert_eq!(without, 50);
    let distinct: BTreeSet<u32> = handed_out.iter().map(|k| k.id.0).collect();
    assert_eq!(distinct.len(), 50);
    let published: BTreeSet<u32> = prekeys.one_time.iter().map(|k| k.id.0).collect();
    assert_eq!(distinct, published);
    for key in &handed_out {
        assert!(prekeys.one_time.contains(key));
    }
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 0);
}

/// Publishing PQ prekeys replaces the PQ last-resort prekey when one is
/// given and adds PQ one-time prekeys, ignoring ids the device already has.
pub(crate) async fn publishing_pq_prekeys_replaces_and_adds<S: Storage>(s: &S) {
    let mut keys = Keys::new(26);
    let alice = account(s, &mut keys, "alice").await;
    let device = alice.device(1);
    // PQ one-time ids: 4..=6 in the first set, 7 and 8 in the second
    // (after its three one-time prekeys), 4 and 5 again in the third.
    let first = keys.prekeys_with(&alice, DeviceId(1), 0, 3);
    let second = keys.prekeys_with(&alice, DeviceId(1), 3, 2);
    let third = keys.prekeys_with(&alice, DeviceId(1), 0, 2);
    assert_eq!(third.pq_one_time[0].id(), first.pq_one_time[0].id());
    assert_ne!(first.pq_last_resort, second.pq_last_resort);
    assert!(matches!(
        s.publish_pq_prekeys(&alice.device(2), Some(&first.pq_last_resort), &[])
            .await,
        Err(StorageError::NoSuchDevice)
    ));
    // PQ prekeys alone are not handed out: the bundle needs the classical ones.
    s.publish_pq_prekeys(&device, Some(&first.pq_last_resort), &first.pq_one_time)
        .await
        .unwrap();
    assert_eq!(s.take_prekeys(&device).await.unwrap(), None);
    assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), 3);
    assert_eq!(s.one_time_prekey_count(&device).await.unwrap(), 0);
    s.publish_prekeys(&device, Some(&first.signed), Some(&first.last_resort), &[])
        .await
        .unwrap();

    // The same PQ one-time prekeys again, other keys under two of their
    // ids, and the second set's: the repeated ids keep their first key.
    // Without a last resort, the old one stays.
    let mut again = first.pq_one_time.clone();
    again.extend_from_slice(&third.pq_one_time);
    again.extend_from_slice(&second.pq_one_time);
    s.publish_pq_prekeys(&device, None, &again).await.unwrap();
    assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), 5);
    let taken = s.take_prekeys(&device).await.unwrap().unwrap();
    assert_eq!(taken.pq_last_resort.as_ref(), Some(&first.pq_last_resort));
    assert_eq!(taken.pq_one_time.as_ref(), Some(&first.pq_one_time[0]));
    assert_eq!(taken.pq_prekey(), Some(&first.pq_one_time[0]));

    // A new PQ last resort replaces the old one.
    s.publish_pq_prekeys(&device, Some(&second.pq_last_resort), &[])
        .await
        .unwrap();
    let taken = s.take_prekeys(&device).await.unwrap().unwrap();
    assert_eq!(taken.pq_last_resort.as_ref(), Some(&second.pq_last_resort));
    assert_eq!(taken.pq_one_time.as_ref(), Some(&first.pq_one_time[1]));
    assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), 3);
    for key in [
        &first.pq_one_time[2],
        &second.pq_one_time[0],
        &second.pq_one_time[1],
    ] {
        let taken = s.take_prekeys(&device).await.unwrap().unwrap();
        assert_eq!(taken.pq_one_time.as_ref(), Some(key));
        assert_eq!(
            taken.pq_one_time.as_ref().map(SignedPqPreKey::kind),
            Some(PqPreKeyKind::OneTime)
        );
    }
    assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), 0);
}

/// PQ one-time prekeys go out lowest id first, each once and independently
/// of the classical one-time prekeys; then the bundle's PQ prekey is the PQ
/// last resort.
pub(crate) async fn pq_prekeys_are_taken_in_order_then_only_the_pq_last_resort<S: Storage>(s: &S) {
    let mut keys = Keys::new(27);
    let alice = account(s, &mut keys, "alice").await;
    let device = alice.device(1);
    let prekeys = keys.prekeys_with(&alice, DeviceId(1), 1, 3);
    let mut reversed = prekeys.pq_one_time.clone();
    reversed.reverse();
    s.publish_prekeys(
        &device,
        Some(&prekeys.signed),
        Some(&prekeys.last_resort),
        &prekeys.one_time,
    )
    .await
    .unwrap();
    s.publish_pq_prekeys(&device, Some(&prekeys.pq_last_resort), &reversed)
        .await
        .unwrap();
    let mut ids: Vec<u32> = prekeys.pq_one_time.iter().map(|k| k.id().0).collect();
    ids.sort_unstable();
    for (left, id) in [2, 1, 0].into_iter().zip(ids) {
        let taken = s.take_prekeys(&device).await.unwrap().unwrap();
        let pq = taken.pq_one_time.clone().unwrap();
        assert_eq!(pq.id().0, id);
        assert!(prekeys.pq_one_time.contains(&pq));
        assert_eq!(taken.pq_prekey(), Some(&pq));
        assert_eq!(taken.pq_last_resort.as_ref(), Some(&prekeys.pq_last_resort));
        assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), left);
        // The single classical one-time prekey went to the first taker.
        assert_eq!(taken.one_time.is_some(), left == 2);
    }
    for _ in 0..2 {
        let taken = s.take_prekeys(&device).await.unwrap().unwrap();
        assert_eq!(taken.signed, prekeys.signed);
        assert_eq!(taken.one_time, None);
        assert_eq!(taken.pq_one_time, None);
        assert_eq!(taken.pq_prekey(), Some(&prekeys.pq_last_resort));
    }
}

/// 100 concurrent takers share 50 PQ one-time prekeys (and no classical
/// one): each PQ key goes to exactly one of them, and the other 50 get only
/// the PQ last resort.
pub(crate) async fn concurrent_takers_never_share_a_pq_one_time_prekey<S: Storage>(s: Arc<S>) {
    let mut keys = Keys::new(28);
    let alice = account(&*s, &mut keys, "alice").await;
    let device = alice.device(1);
    let prekeys = keys.prekeys_with(&alice, DeviceId(1), 0, 50);
    publish_all(&*s, &device, &prekeys).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = Arc::clone(&s);
            let device = device.clone();
            tokio::spawn(async move { s.take_prekeys(&device).await })
        })
        .collect();
    let mut handed_out = Vec::new();
    let mut last_resort = 0;
    for task in tasks {
        let taken = task.await.unwrap().unwrap().unwrap();
        assert_eq!(taken.one_time, None);
        assert_eq!(taken.pq_last_resort.as_ref(), Some(&prekeys.pq_last_resort));
        match taken.pq_one_time {
            Some(key) => handed_out.push(key),
            None => last_resort += 1,
        }
    }
    assert_eq!(handed_out.len(), 50);
    assert_eq!(last_resort, 50);
    let distinct: BTreeSet<u32> = handed_out.iter().map(|k| k.id().0).collect();
    let published: BTreeSet<u32> = prekeys.pq_one_time.iter().map(|k| k.id().0).collect();
    assert_eq!(distinct, published);
    for key in &handed_out {
        assert!(prekeys.pq_one_time.contains(key));
    }
    assert_eq!(s.pq_one_time_prekey_count(&device).await.unwrap(), 0);
}

/// A reader that pages with `seq > after` while 8 writers queue 200
/// envelopes for its device sees every one of them exactly once: sequence
/// numbers become visible in order.
pub(crate) async fn a_reader_paging_during_concurrent_enqueues_misses_nothing<S: Storage>(
    s: Arc<S>,
) {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let mut keys = Keys::new(25);
    let alice = account(&*s, &mut keys, "alice").await;
    let bob = account(&*s, &mut keys, "bob").await;
    let recipient = bob.device(1);
    let mut sent = BTreeSet::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let envelopes: Vec<NewEnvelope> = (0..EACH)
                .map(|_| keys.new_envelope(&recipient, &alice.device(1), NOW))
                .collect();
            sent.extend(ids(&envelopes));
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for envelope in envelopes {
                    s.enqueue(std::slice::from_ref(&envelope)).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut after = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        let queued = s.queued(&recipient, after, 7).await.unwrap();
        read_page(&mut after, &mut seen, queued);
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    loop {
        let queued = s.queued(&recipient, after, 7).await.unwrap();
        if queued.is_empty() {
            break;
        }
        read_page(&mut after, &mut seen, queued);
    }
    assert_eq!(seen.len(), WRITERS * EACH);
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), sent);
}

/// Records a page of `queued`, checking that it continues after `after`.
fn read_page(after: &mut u64, seen: &mut Vec<EnvelopeId>, page: Vec<QueuedEnvelope>) {
    for queued in page {
        assert!(queued.seq > *after);
        *after = queued.seq;
        seen.push(queued.delivery.id);
    }
}

/// A batch that cannot be queued whole queues nothing.
pub(crate) async fn enqueue_is_all_or_nothing<S: Storage>(s: &S) {
    let mut keys = Keys::new(15);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let (a, b) = (alice.device(1), bob.device(1));
    s.enqueue(&[]).await.unwrap();

    // The same envelope id twice in one batch.
    let first = keys.new_envelope(&a, &b, NOW);
    let mut twin = keys.new_envelope(&b, &a, NOW);
    twin.delivery.id = first.delivery.id;
    let batch = [keys.new_envelope(&b, &a, NOW), first.clone(), twin];
    assert!(s.enqueue(&batch).await.is_err());
    assert_eq!(s.queue_depth().await.unwrap(), 0);

    // An id already queued.
    s.enqueue(std::slice::from_ref(&first)).await.unwrap();
    let mut again = keys.new_envelope(&b, &a, NOW);
    again.delivery.id = first.delivery.id;
    let batch = [keys.new_envelope(&b, &a, NOW), again];
    assert!(s.enqueue(&batch).await.is_err());
    assert_eq!(s.queue_depth().await.unwrap(), 1);

    // A recipient that does not exist.
    let batch = [
        keys.new_envelope(&b, &a, NOW),
        keys.new_envelope(&alice.device(2), &b, NOW),
    ];
    assert!(matches!(
        s.enqueue(&batch).await,
        Err(StorageError::NoSuchDevice)
    ));
    assert_eq!(s.queue_depth().await.unwrap(), 1);
    assert_eq!(queued_ids(s, &a).await, vec![first.delivery.id]);
    assert_eq!(queued_ids(s, &b).await, vec![]);
}

/// Each recipient's queue is in the order envelopes were queued, across
/// batches, and pages by `after` and `limit`.
pub(crate) async fn the_queue_keeps_order_across_batches_and_pages<S: Storage>(s: &S) {
    let mut keys = Keys::new(16);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    link(s, &mut keys, &bob).await;
    let (a, b1, b2) = (alice.device(1), bob.device(1), bob.device(2));
    let mut to_b1 = Vec::new();
    let mut to_b2 = Vec::new();
    for round in 0..4u64 {
        let batch = vec![
            keys.new_envelope(&b1, &a, NOW + round),
            keys.new_envelope(&b2, &a, NOW + round),
            keys.new_envelope(&b1, &a, NOW + round),
        ];
        s.enqueue(&batch).await.unwrap();
        to_b1.extend([batch[0].clone(), batch[2].clone()]);
        to_b2.push(batch[1].clone());
    }
    let all = s.queued(&b1, 0, 100).await.unwrap();
    let deliveries: Vec<Delivery> = all.iter().map(|q| q.delivery.clone()).collect();
    let expected: Vec<Delivery> = to_b1.iter().map(|e| e.delivery.clone()).collect();
    assert_eq!(deliveries, expected);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(queued_ids(s, &b2).await, ids(&to_b2));

    // Pages of three, each after the last seq seen.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.queued(&b1, after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(
        s.queued(&b1, all[4].seq, 2).await.unwrap(),
        all[5..7].to_vec()
    );
    assert_eq!(s.queued(&b1, 0, 0).await.unwrap(), vec![]);
    assert_eq!(s.queued(&b1, u64::MAX, 10).await.unwrap(), vec![]);
    assert_eq!(s.queued(&a, 0, 10).await.unwrap(), vec![]);

    // Later envelopes come after everything queued before, even after acks.
    s.ack(&b1, &ids(&to_b1[..2])).await.unwrap();
    let late = keys.new_envelope(&b1, &a, NOW + 10);
    s.enqueue(std::slice::from_ref(&late)).await.unwrap();
    let rest = s.queued(&b1, 0, 100).await.unwrap();
    assert_eq!(rest.len(), 7);
    assert_eq!(rest.last().unwrap().delivery, late.delivery);
    assert!(rest.last().unwrap().seq > all.last().unwrap().seq);
}

/// An envelope of the largest size is stored and read back intact.
pub(crate) async fn large_envelopes_round_trip<S: Storage>(s: &S) {
    let mut keys = Keys::new(17);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let mut batch = vec![keys.new_envelope(&bob.device(1), &alice.device(1), NOW)];
    batch[0].delivery.envelope = keys.envelope(&alice.device(1), MAX_SESSION_MESSAGE_LEN);
    batch.push(keys.new_envelope(&bob.device(1), &alice.device(1), NOW));
    batch[1].delivery.envelope = keys.envelope(&alice.device(1), MAX_SESSION_MESSAGE_LEN / 2);
    s.enqueue(&batch).await.unwrap();
    let queued = s.queued(&bob.device(1), 0, 10).await.unwrap();
    let deliveries: Vec<Delivery> = queued.into_iter().map(|q| q.delivery).collect();
    assert_eq!(
        deliveries,
        vec![batch[0].delivery.clone(), batch[1].delivery.clone()]
    );
}

/// An ack deletes the acknowledging device's envelopes only and counts ids
/// that are in another device's queue.
pub(crate) async fn ack_removes_only_own_envelopes<S: Storage>(s: &S) {
    let mut keys = Keys::new(18);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let (a, b) = (alice.device(1), bob.device(1));
    let batch = vec![
        keys.new_envelope(&a, &b, NOW),
        keys.new_envelope(&a, &b, NOW),
        keys.new_envelope(&b, &a, NOW),
    ];
    s.enqueue(&batch).await.unwrap();
    let [mine, kept, theirs] = [0, 1, 2].map(|i| batch[i].delivery.id);
    let unknown = keys.envelope_id();

    assert_eq!(s.ack(&a, &[]).await.unwrap(), AckOutcome::default());
    let outcome = s.ack(&a, &[mine, theirs, unknown, mine]).await.unwrap();
    assert_eq!(
        outcome,
        AckOutcome {
            removed: 1,
            foreign: 1
        }
    );
    assert_eq!(queued_ids(s, &a).await, vec![kept]);
    assert_eq!(queued_ids(s, &b).await, vec![theirs]);
    assert_eq!(
        s.ack(&a, &[mine]).await.unwrap(),
        AckOutcome {
            removed: 0,
            foreign: 0
        }
    );
    // A device of the same account is another queue too.
    let a2 = alice.device(link(s, &mut keys, &alice).await.0);
    assert_eq!(
        s.ack(&a2, &[kept]).await.unwrap(),
        AckOutcome {
            removed: 0,
            foreign: 1
        }
    );
    // Many ids at once.
    let many: Vec<NewEnvelope> = (0..600).map(|_| keys.new_envelope(&a, &b, NOW)).collect();
    s.enqueue(&many).await.unwrap();
    let mut acked = ids(&many);
    acked.push(kept);
    acked.push(theirs);
    assert_eq!(
        s.ack(&a, &acked).await.unwrap(),
        AckOutcome {
            removed: 601,
            foreign: 1
        }
    );
    assert_eq!(s.queue_depth().await.unwrap(), 1);
}

/// The queue depth counts every device's envelopes.
pub(crate) async fn queue_depth_counts_every_queue<S: Storage>(s: &S) {
    let mut keys = Keys::new(19);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    let (a, b) = (alice.device(1), bob.device(1));
    let batch: Vec<NewEnvelope> = (0..5)
        .map(|i| {
            if i % 2 == 0 {
                keys.new_envelope(&a, &b, NOW)
            } else {
                keys.new_envelope(&b, &a, NOW)
            }
        })
        .collect();
    s.enqueue(&batch).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 5);
    s.ack(&b, &[batch[1].delivery.id]).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 4);
}

/// Purging deletes the envelopes accepted strictly before the cut-off.
pub(crate) async fn purging_envelopes_goes_by_server_time<S: Storage>(s: &S) {
    let mut keys = Keys::new(20);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let (a, b) = (alice.device(1), bob.device(1));
    let batch = vec![
        keys.new_envelope(&a, &b, NOW - 100),
        keys.new_envelope(&b, &a, NOW - 10),
        keys.new_envelope(&a, &b, NOW),
    ];
    s.enqueue(&batch).await.unwrap();
    assert_eq!(s.purge_envelopes(NOW - 100).await.unwrap(), 0);
    assert_eq!(s.purge_envelopes(NOW - 10).await.unwrap(), 1);
    assert_eq!(queued_ids(s, &a).await, vec![batch[2].delivery.id]);
    assert_eq!(queued_ids(s, &b).await, vec![batch[1].delivery.id]);
    assert_eq!(s.purge_envelopes(NOW + 1).await.unwrap(), 2);
    assert_eq!(s.queue_depth().await.unwrap(), 0);
}

/// The purge deletes exactly the permissions expired by then, of every
/// account, and a permission still valid keeps working.
pub(crate) async fn expired_link_permissions_are_purged<S: Storage>(s: &S) {
    let mut keys = Keys::new(30);
    let alice = account(s, &mut keys, "alice").await;
    let bob = account(s, &mut keys, "bob").await;
    let (short, long, bobs) = (keys.token(), keys.token(), keys.token());
    for (issuer, token, expires_at) in [
        (alice.device(1), &short, NOW + 10),
        (alice.device(1), &long, NOW + 20),
        (bob.device(1), &bobs, NOW + 15),
    ] {
        s.add_link_permission(&issuer, token, expires_at)
            .await
            .unwrap();
    }
    assert_eq!(s.purge_link_permissions(NOW).await.unwrap(), 0);
    assert_eq!(s.purge_link_permissions(NOW + 15).await.unwrap(), 2);
    assert_eq!(s.purge_link_permissions(NOW + 15).await.unwrap(), 0);
    let auth = DeviceAuthKeyPair::generate(&mut keys.rng).public_key();
    let device = s
        .add_linked_device(&alice.user, &long, &auth, 6, NOW + 16)
        .await
        .unwrap();
    assert_eq!(device, DeviceId(2));
    // The spent one is gone with the link: nothing is left to purge.
    assert_eq!(s.purge_link_permissions(NOW + 100).await.unwrap(), 0);
}

/// A push token is set, replaced and cleared per device.
pub(crate) async fn push_tokens_are_set_and_cleared<S: Storage>(s: &S) {
    let mut keys = Keys::new(21);
    let alice = account(s, &mut keys, "alice").await;
    link(s, &mut keys, &alice).await;
    let (one, two) = (alice.device(1), alice.device(2));
    assert_eq!(s.push_token(&one).await.unwrap(), None);
    s.set_push_token(&one, Some("fcm:abc")).await.unwrap();
    s.set_push_token(&one, Some("fcm:abc")).await.unwrap();
    assert_eq!(
        s.push_token(&one).await.unwrap().as_deref(),
        Some("fcm:abc")
    );
    assert_eq!(s.push_token(&two).await.unwrap(), None);
    let long = "ü".repeat(2048);
    s.set_push_token(&one, Some(&long)).await.unwrap();
    assert_eq!(s.push_token(&one).await.unwrap(), Some(long));
    s.set_push_token(&one, None).await.unwrap();
    assert_eq!(s.push_token(&one).await.unwrap(), None);
    assert!(matches!(
        s.set_push_token(&alice.device(3), Some("x")).await,
        Err(StorageError::NoSuchDevice)
    ));
    assert_eq!(s.push_token(&alice.device(3)).await.unwrap(), None);
}

/// Blob index rows are read back, and purged by age with their ids
/// returned.
pub(crate) async fn blobs_are_indexed_and_purged_by_age<S: Storage>(s: &S) {
    let mut keys = Keys::new(22);
    let alice = account(s, &mut keys, "alice").await;
    let blobs: Vec<BlobRecord> = [(NOW - 50, 10), (NOW - 20, 5 << 20), (NOW, 50 << 20)]
        .into_iter()
        .map(|(created_at, size)| BlobRecord {
            blob: keys.blob_id(),
            owner: alice.device(1),
            size,
            created_at,
        })
        .collect();
    for blob in &blobs {
        s.add_blob(blob).await.unwrap();
    }
    for blob in &blobs {
        assert_eq!(s.blob(&blob.blob).await.unwrap().as_ref(), Some(blob));
    }
    assert!(s.add_blob(&blobs[0]).await.is_err());
    assert_eq!(s.blob(&keys.blob_id()).await.unwrap(), None);
    assert_eq!(
        s.blob_bytes(&alice.user).await.unwrap(),
        10 + (5 << 20) + (50 << 20)
    );
    let nobody = UserId::new("nobody").unwrap();
    assert_eq!(s.blob_bytes(&nobody).await.unwrap(), 0);
    assert_eq!(s.purge_blobs(NOW - 50).await.unwrap(), vec![]);
    assert_eq!(
        s.purge_blobs(NOW).await.unwrap(),
        vec![blobs[0].blob, blobs[1].blob]
    );
    assert_eq!(s.blob(&blobs[0].blob).await.unwrap(), None);
    assert_eq!(s.blob(&blobs[1].blob).await.unwrap(), None);
    assert_eq!(
        s.blob(&blobs[2].blob).await.unwrap().as_ref(),
        Some(&blobs[2])
    );
    assert_eq!(s.blob_bytes(&alice.user).await.unwrap(), 50 << 20);
    // Removing the uploading device keeps the index row (and the user's
    // bytes: the quota is the user's).
    link(s, &mut keys, &alice).await;
    assert!(s.remove_device(&alice.device(1)).await.unwrap());
    assert_eq!(
        s.blob(&blobs[2].blob).await.unwrap().as_ref(),
        Some(&blobs[2])
    );
    assert_eq!(s.blob_bytes(&alice.user).await.unwrap(), 50 << 20);
}

/// Migrating an up-to-date database changes nothing.
pub(crate) async fn migrate_is_idempotent<S: Storage>(s: &S) {
    let mut keys = Keys::new(23);
    let alice = account(s, &mut keys, "alice").await;
    let version = s.migrate().await.unwrap();
    assert!(version >= 1);
    assert_eq!(s.migrate().await.unwrap(), version);
    assert_eq!(
        s.identity(&alice.user).await.unwrap(),
        Some(alice.identity.public_key())
    );
}

/// Everything committed is there after the storage is closed and opened
/// again.
pub(crate) async fn data_survives_reopening<D: TestDb>(db: D) -> D {
    let mut keys = Keys::new(24);
    let (alice, bob, prekeys, batch, blob, identity) = {
        let storage = db.storage();
        let s = &*storage;
        let alice = account(s, &mut keys, "alice").await;
        let bob = account(s, &mut keys, "bob").await;
        link(s, &mut keys, &alice).await;
        let prekeys = publish(s, &mut keys, &alice, 2, 3).await;
        s.set_certificate(&alice.device(2), &prekeys.certificate)
            .await
            .unwrap();
        s.set_push_token(&alice.device(2), Some("token"))
            .await
            .unwrap();
        let batch = vec![
            keys.new_envelope(&alice.device(2), &bob.device(1), NOW),
            keys.new_envelope(&alice.device(2), &bob.device(1), NOW + 1),
        ];
        s.enqueue(&batch).await.unwrap();
        let blob = BlobRecord {
            blob: keys.blob_id(),
            owner: bob.device(1),
            size: 77,
            created_at: NOW,
        };
        s.add_blob(&blob).await.unwrap();
        let identity = s.identity(&alice.user).await.unwrap();
        (alice, bob, prekeys, batch, blob, identity)
    };

    let db = db.reopen().await;
    let storage = db.storage();
    let s = &*storage;
    let version = s.migrate().await.unwrap();
    assert!(version >= 1);
    assert_eq!(s.identity(&alice.user).await.unwrap(), identity);
    assert_eq!(device_ids(s, &alice.user).await, vec![1, 2]);
    let record = s.device(&alice.device(2)).await.unwrap().unwrap();
    assert_eq!(record.certificate, Some(prekeys.certificate.clone()));
    assert_eq!(
        s.push_token(&alice.device(2)).await.unwrap().as_deref(),
        Some("token")
    );
    assert_eq!(s.one_time_prekey_count(&alice.device(2)).await.unwrap(), 3);
    assert_eq!(
        s.pq_one_time_prekey_count(&alice.device(2)).await.unwrap(),
        3
    );
    let taken = s.take_prekeys(&alice.device(2)).await.unwrap().unwrap();
    assert_eq!(taken.signed, prekeys.signed);
    assert_eq!(taken.pq_last_resort, Some(prekeys.pq_last_resort.clone()));
    assert!(prekeys.pq_one_time.contains(&taken.pq_one_time.unwrap()));
    let deliveries: Vec<Delivery> = s
        .queued(&alice.device(2), 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.delivery)
        .collect();
    assert_eq!(
        deliveries,
        vec![batch[0].delivery.clone(), batch[1].delivery.clone()]
    );
    assert_eq!(s.blob(&blob.blob).await.unwrap(), Some(blob));
    // The device counter survived too.
    assert_eq!(link(s, &mut keys, &alice).await, DeviceId(3));
    assert_eq!(device_ids(s, &bob.user).await, vec![1]);
    db
}
