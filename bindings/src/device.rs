//! New devices, registration and linking, and the registered [`Device`].

use std::sync::{Arc, Mutex, MutexGuard};

use hush::SessionManager;
use hush::keys::{DeviceAuthKeyPair, DeviceId, IdentityKey, IdentityKeyPair, PreKeySettings};
use hush::link::LinkCode;
use hush::store::{MemoryStore, SqliteStore, StorageKey};
use rand::rngs::StdRng;
use zeroize::Zeroizing;

use crate::storage::{AppStorage, DeviceStore};
use crate::types::{
    DecryptedMessage, DeviceAddress, InboxEntry, SafetyNumber, ServerErrorCode, TrustEvent, fixed,
    fresh_rng, unix_now, user_id,
};
use crate::{Client, HushError};

/// A fresh random 32-byte storage key. Keep it in the platform's keystore
/// (Android Keystore, Keychain, Secret Service), never next to the store.
#[uniffi::export]
pub fn generate_storage_key() -> Vec<u8> {
    let mut rng = fresh_rng();
    StorageKey::generate(&mut rng).as_bytes().to_vec()
}

fn storage_key(bytes: &[u8]) -> Result<StorageKey, HushError> {
    let raw = Zeroizing::new(fixed::<32>(bytes, "the storage key")?);
    Ok(StorageKey::from_bytes(*raw))
}

/// Locks a mutex; a poisoned one (a panic on another thread) is an error,
/// not a second panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, HushError> {
    mutex.lock().map_err(|_| HushError::Internal {
        reason: "an earlier call panicked; drop this object".into(),
    })
}

#[allow(
    clippy::large_enum_variant,
    reason = "one value per object, behind its mutex; never moved in a hot path"
)]
enum NewKeys {
    Account {
        identity: IdentityKeyPair,
        auth: DeviceAuthKeyPair,
        user: hush::keys::UserId,
    },
    Linked {
        linked: Box<hush::link::LinkedAccount>,
        auth: DeviceAuthKeyPair,
    },
}

/// The keys of a device that is not registered yet: the first device of a
/// new account, or a device linked to an existing one.
///
/// ```text
/// new = NewDevice.for_new_account("alice")
/// reg = new.registration("chat.example.org")   # drive it over a connection
/// ... RegistrationEvent.Registered(device_id)
/// device = Device.create_sqlite(path, key, new, device_id)
/// ```
#[derive(uniffi::Object)]
pub struct NewDevice {
    keys: Mutex<Option<NewKeys>>,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewDevice")
    }
}

#[uniffi::export]
impl NewDevice {
    /// The first device of the new account `user`: a new account identity
    /// and device key.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for an invalid user id.
    #[uniffi::constructor]
    pub fn for_new_account(user: String) -> Result<Arc<Self>, HushError> {
        let user = user_id(&user)?;
        let mut rng = fresh_rng();
        Ok(Arc::new(Self {
            keys: Mutex::new(Some(NewKeys::Account {
                identity: IdentityKeyPair::generate(&mut rng),
                auth: DeviceAuthKeyPair::generate(&mut rng),
                user,
            })),
        }))
    }

    /// A device of the account an existing device sent (see
    /// [`Registration::provisioning`]).
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`] if the account was already given to
    /// another `NewDevice`.
    #[uniffi::constructor]
    pub fn for_linked_account(account: Arc<LinkedAccount>) -> Result<Arc<Self>, HushError> {
        let linked = lock(&account.inner)?.take().ok_or(HushError::AlreadyUsed {
            what: "the linked account".into(),
        })?;
        let mut rng = fresh_rng();
        Ok(Arc::new(Self {
            keys: Mutex::new(Some(NewKeys::Linked {
                linked: Box::new(linked),
                auth: DeviceAuthKeyPair::generate(&mut rng),
            })),
        }))
    }

    /// The user this device belongs to.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`] after the device was created.
    pub fn user(&self) -> Result<String, HushError> {
        match lock(&self.keys)?.as_ref() {
            Some(NewKeys::Account { user, .. }) => Ok(user.as_str().to_owned()),
            Some(NewKeys::Linked { linked, .. }) => Ok(linked.user.as_str().to_owned()),
            None => Err(used()),
        }
    }

    /// The registration to run on a fresh connection to `server_name` (the
    /// name the app dials, as in the server's certificate).
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a server name that is not a DNS
    /// name or IP literal; [`HushError::AlreadyUsed`] after the device was
    /// created.
    pub fn registration(&self, server_name: String) -> Result<Arc<Registration>, HushError> {
        let keys = lock(&self.keys)?;
        let registration = match keys.as_ref() {
            Some(NewKeys::Account {
                identity,
                auth,
                user,
            }) => {
                hush::client::Registration::new_account(identity, auth, user.clone(), &server_name)?
            }
            Some(NewKeys::Linked { linked, auth }) => {
                hush::client::Registration::linked_device(linked, auth, &server_name)?
            }
            None => return Err(used()),
        };
        Ok(Registration::wrap(registration))
    }
}

fn closed() -> HushError {
    HushError::AlreadyUsed {
        what: "the device (it was closed)".into(),
    }
}

fn used() -> HushError {
    HushError::AlreadyUsed {
        what: "the new device's keys".into(),
    }
}

/// An account sent by an existing device to this new one, with its
/// single-use permission; pass it to [`NewDevice::for_linked_account`].
#[derive(uniffi::Object)]
pub struct LinkedAccount {
    inner: Mutex<Option<hush::link::LinkedAccount>>,
}

impl std::fmt::Debug for LinkedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkedAccount")
    }
}

#[uniffi::export]
impl LinkedAccount {
    /// The account's user id.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`] once given to a `NewDevice`.
    pub fn user(&self) -> Result<String, HushError> {
        lock(&self.inner)?
            .as_ref()
            .map(|l| l.user.as_str().to_owned())
            .ok_or(HushError::AlreadyUsed {
                what: "the linked account".into(),
            })
    }
}

/// What a [`Registration`] produced.
#[derive(Debug, uniffi::Enum)]
pub enum RegistrationEvent {
    /// The server assigned this device id: create the [`Device`] with it.
    Registered {
        /// The device id.
        device_id: u32,
    },
    /// Show this link code to the user (QR or hex text); it must reach an
    /// existing device of the account, which approves it with
    /// `Client.send_link`.
    ShowCode {
        /// The code.
        code: Vec<u8>,
    },
    /// The existing device sent the account: make a
    /// `NewDevice.for_linked_account` and register it on a new connection.
    Linked {
        /// The account.
        account: Arc<LinkedAccount>,
    },
    /// The server refused.
    Refused {
        /// Why.
        code: ServerErrorCode,
        /// The server's detail.
        reason: String,
    },
    /// The link message did not open (it was not sealed to this code).
    LinkRefused {
        /// Why.
        reason: String,
    },
}

/// The sans-IO side of an unauthenticated connection: registering a
/// device, or waiting as a new device for an existing one to link it.
/// Feed it what the connection reads, write out what it transmits, and
/// read its events, until the one you wait for.
#[derive(uniffi::Object)]
pub struct Registration {
    inner: Mutex<hush::client::Registration>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registration")
    }
}

impl Registration {
    fn wrap(inner: hush::client::Registration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(inner),
        })
    }
}

#[uniffi::export]
impl Registration {
    /// Waits, as a new device, for an existing device to send the account:
    /// first [`RegistrationEvent::ShowCode`], then
    /// [`RegistrationEvent::Linked`].
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for an invalid server name.
    #[uniffi::constructor]
    pub fn provisioning(server_name: String) -> Result<Arc<Self>, HushError> {
        let mut rng = fresh_rng();
        Ok(Self::wrap(hush::client::Registration::provisioning(
            &mut rng,
            &server_name,
        )?))
    }

    /// Bytes read from the connection.
    ///
    /// # Errors
    /// [`HushError::Protocol`]: close the connection.
    pub fn handle_input(&self, data: Vec<u8>) -> Result<(), HushError> {
        Ok(lock(&self.inner)?.handle_input(&data)?)
    }

    /// Everything to write to the connection now, in one buffer (empty when
    /// there is nothing).
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn take_transmit(&self) -> Result<Vec<u8>, HushError> {
        let mut inner = lock(&self.inner)?;
        let mut out = Vec::new();
        while let Some(bytes) = inner.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// The next event, if any.
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn poll_event(&self) -> Result<Option<RegistrationEvent>, HushError> {
        let event = lock(&self.inner)?.poll_event();
        Ok(event.map(|event| match event {
            hush::client::RegistrationEvent::Registered(device) => RegistrationEvent::Registered {
                device_id: device.0,
            },
            hush::client::RegistrationEvent::ShowCode(code) => RegistrationEvent::ShowCode {
                code: code.to_bytes(),
            },
            hush::client::RegistrationEvent::Linked(linked) => RegistrationEvent::Linked {
                account: Arc::new(LinkedAccount {
                    inner: Mutex::new(Some(*linked)),
                }),
            },
            hush::client::RegistrationEvent::Refused(e) => RegistrationEvent::Refused {
                code: ServerErrorCode::from_sdk(e.code),
                reason: e.message,
            },
            hush::client::RegistrationEvent::LinkRefused(e) => RegistrationEvent::LinkRefused {
                reason: e.to_string(),
            },
            other => RegistrationEvent::LinkRefused {
                reason: format!("unexpected registration event {other:?}"),
            },
        }))
    }
}

/// A device's SDK state: its session manager, or the client that owns it.
#[allow(
    clippy::large_enum_variant,
    reason = "one value per object, behind its mutex; never moved in a hot path"
)]
pub(crate) enum Mode {
    Manager(SessionManager<DeviceStore>),
    Client(Box<hush::client::Client<DeviceStore>>),
    /// Only while switching from one to the other.
    Switching,
    /// After [`Device::close_store`].
    Closed,
}

pub(crate) struct Inner {
    pub(crate) mode: Mode,
    pub(crate) rng: StdRng,
    /// Trust events of [`PeerSession::decrypt`] and
    /// [`PeerSession::start`], until [`Device::take_trust_events`].
    pub(crate) trust_events: Vec<TrustEvent>,
}

impl Inner {
    pub(crate) fn manager(
        &mut self,
    ) -> Result<(&mut SessionManager<DeviceStore>, &mut StdRng), HushError> {
        let manager = match &mut self.mode {
            Mode::Manager(m) => m,
            Mode::Client(c) => c.manager_mut(),
            Mode::Switching => {
                return Err(HushError::Internal {
                    reason: "the device is being handed to its client".into(),
                });
            }
            Mode::Closed => return Err(closed()),
        };
        Ok((manager, &mut self.rng))
    }
}

pub(crate) type Shared = Arc<Mutex<Inner>>;

/// A registered device over its store: the session-level API (for apps with
/// their own transport), trust and safety numbers. [`Device::client`] gives
/// the protocol client of the reference server for the same device.
///
/// Every call that changes state writes it to the store in one batch before
/// it returns: a crash never loses a session step.
#[derive(uniffi::Object)]
pub struct Device {
    shared: Shared,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Device")
    }
}

impl Device {
    fn wrap(manager: SessionManager<DeviceStore>) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Mutex::new(Inner {
                mode: Mode::Manager(manager),
                rng: fresh_rng(),
                trust_events: Vec::new(),
            })),
        })
    }

    fn create_in(
        store: DeviceStore,
        storage_key_bytes: &[u8],
        new_device: &NewDevice,
        device_id: u32,
    ) -> Result<Arc<Self>, HushError> {
        let key = storage_key(storage_key_bytes)?;
        let mut keys = lock(&new_device.keys)?;
        let (identity, auth, user) = match keys.take().ok_or_else(used)? {
            NewKeys::Account {
                identity,
                auth,
                user,
            } => (identity, auth, user),
            NewKeys::Linked { linked, auth } => {
                let linked = *linked;
                (linked.identity, auth, linked.user)
            }
        };
        let mut rng = fresh_rng();
        let manager = SessionManager::create(
            store,
            &key,
            identity,
            auth,
            user,
            DeviceId(device_id),
            PreKeySettings::default(),
            &mut rng,
            unix_now(),
        )?;
        Ok(Self::wrap(manager))
    }

    fn open_in(store: DeviceStore, storage_key_bytes: &[u8]) -> Result<Arc<Self>, HushError> {
        let key = storage_key(storage_key_bytes)?;
        Ok(Self::wrap(SessionManager::open(store, &key)?))
    }

    pub(crate) fn from_shared(shared: Shared) -> Arc<Self> {
        Arc::new(Self { shared })
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut SessionManager<DeviceStore>, &mut StdRng) -> Result<T, HushError>,
    ) -> Result<T, HushError> {
        let mut inner = lock(&self.shared)?;
        let (manager, rng) = inner.manager()?;
        f(manager, rng)
    }
}

fn sqlite(path: &str) -> Result<DeviceStore, HushError> {
    Ok(DeviceStore::Sqlite(SqliteStore::open(path)?))
}

#[uniffi::export]
impl Device {
    /// Creates the device `device_id` (from [`RegistrationEvent::Registered`])
    /// in a new SQLite store at `path`, sealed with `storage_key` (32 bytes).
    ///
    /// # Errors
    /// [`HushError::AccountExists`] if the store already holds a device,
    /// [`HushError::StoreLocked`], [`HushError::Storage`],
    /// [`HushError::AlreadyUsed`] for keys already used.
    #[uniffi::constructor]
    pub fn create_sqlite(
        path: String,
        storage_key: Vec<u8>,
        new_device: Arc<NewDevice>,
        device_id: u32,
    ) -> Result<Arc<Self>, HushError> {
        let storage_key = Zeroizing::new(storage_key);
        Self::create_in(sqlite(&path)?, &storage_key, &new_device, device_id)
    }

    /// Opens the device kept in the SQLite store at `path`.
    ///
    /// # Errors
    /// [`HushError::NoAccount`], [`HushError::WrongStorageKey`],
    /// [`HushError::StoreLocked`], [`HushError::Storage`].
    #[uniffi::constructor]
    pub fn open_sqlite(path: String, storage_key: Vec<u8>) -> Result<Arc<Self>, HushError> {
        let storage_key = Zeroizing::new(storage_key);
        Self::open_in(sqlite(&path)?, &storage_key)
    }

    /// Creates the device in storage the app provides (see [`AppStorage`]).
    ///
    /// # Errors
    /// As [`Self::create_sqlite`], and whatever the storage raises.
    #[uniffi::constructor]
    pub fn create_with_storage(
        storage: Arc<dyn AppStorage>,
        storage_key: Vec<u8>,
        new_device: Arc<NewDevice>,
        device_id: u32,
    ) -> Result<Arc<Self>, HushError> {
        let storage_key = Zeroizing::new(storage_key);
        Self::create_in(
            DeviceStore::App(storage),
            &storage_key,
            &new_device,
            device_id,
        )
    }

    /// Opens the device kept in storage the app provides.
    ///
    /// # Errors
    /// As [`Self::open_sqlite`], and whatever the storage raises.
    #[uniffi::constructor]
    pub fn open_with_storage(
        storage: Arc<dyn AppStorage>,
        storage_key: Vec<u8>,
    ) -> Result<Arc<Self>, HushError> {
        let storage_key = Zeroizing::new(storage_key);
        Self::open_in(DeviceStore::App(storage), &storage_key)
    }

    /// Creates the device in memory only: everything is lost when it is
    /// dropped. For tests and benchmarks.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`] for keys already used.
    #[uniffi::constructor]
    pub fn create_in_memory(
        new_device: Arc<NewDevice>,
        device_id: u32,
    ) -> Result<Arc<Self>, HushError> {
        let key = Zeroizing::new(generate_storage_key());
        Self::create_in(
            DeviceStore::Memory(MemoryStore::new()),
            &key,
            &new_device,
            device_id,
        )
    }

    /// This device's address.
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn address(&self) -> Result<DeviceAddress, HushError> {
        self.with(|m, _| Ok(m.address().into()))
    }

    /// The account identity (32 bytes), shared by the account's devices.
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn identity_key(&self) -> Result<Vec<u8>, HushError> {
        self.with(|m, _| Ok(m.identity_key().to_bytes().to_vec()))
    }

    /// This device's prekey bundle, for apps that move bundles over their
    /// own transport; a peer passes it to [`Self::start_session`].
    ///
    /// # Errors
    /// [`HushError::Storage`].
    pub fn bundle(&self) -> Result<Vec<u8>, HushError> {
        self.with(|m, _| Ok(m.bundle()?.to_bytes()))
    }

    /// Starts a session with the device whose bundle this is (its
    /// signatures are checked; a bundle without a post-quantum prekey is
    /// refused). Returns what changed in trust.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a malformed bundle,
    /// [`HushError::IdentityChanged`], [`HushError::Refused`] for a bad
    /// signature.
    pub fn start_session(&self, bundle: Vec<u8>) -> Result<Vec<TrustEvent>, HushError> {
        let bundle = hush::PreKeyBundle::from_bytes(&bundle)?;
        self.with(|m, rng| {
            Ok(TrustEvent::all(m.start_session(
                rng,
                &bundle,
                unix_now(),
            )?))
        })
    }

    /// Whether there is a session with the device.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Storage`].
    pub fn has_session(&self, peer: DeviceAddress) -> Result<bool, HushError> {
        let peer = peer.to_sdk()?;
        self.with(|m, _| Ok(m.has_session(&peer)?))
    }

    /// Encrypts for the device over the session with it.
    ///
    /// # Errors
    /// [`HushError::NoSession`], [`HushError::Storage`].
    pub fn encrypt(&self, peer: DeviceAddress, plaintext: Vec<u8>) -> Result<Vec<u8>, HushError> {
        let peer = peer.to_sdk()?;
        let plaintext = Zeroizing::new(plaintext);
        self.with(|m, rng| Ok(m.encrypt(rng, &peer, &plaintext, unix_now())?))
    }

    /// Decrypts a message from the device (the first message of a session
    /// starts it).
    ///
    /// # Errors
    /// [`HushError::Refused`] for a message that does not authenticate or
    /// is a replay, [`HushError::IdentityChanged`],
    /// [`HushError::UntrustedDevice`], [`HushError::Storage`].
    pub fn decrypt(
        &self,
        sender: DeviceAddress,
        message: Vec<u8>,
    ) -> Result<DecryptedMessage, HushError> {
        let sender = sender.to_sdk()?;
        self.with(|m, rng| {
            let decrypted = m.decrypt(rng, &sender, &message, unix_now())?;
            Ok(DecryptedMessage {
                plaintext: decrypted.plaintext,
                events: TrustEvent::all(decrypted.events),
            })
        })
    }

    /// The session with `peer`, for the hot path: its `encrypt` and
    /// `decrypt` take and return plain bytes. There need not be a session
    /// yet (`encrypt` raises [`HushError::NoSession`] until one starts).
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a bad user id.
    pub fn session(&self, peer: DeviceAddress) -> Result<Arc<PeerSession>, HushError> {
        Ok(Arc::new(PeerSession {
            shared: self.shared.clone(),
            peer: peer.to_sdk()?,
        }))
    }

    /// Takes the trust events that [`PeerSession::decrypt`] queued (a new
    /// identity or device seen with a first message); show them.
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn take_trust_events(&self) -> Result<Vec<TrustEvent>, HushError> {
        Ok(std::mem::take(&mut lock(&self.shared)?.trust_events))
    }

    /// The safety number with `user`, or none before their identity is
    /// known.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Storage`].
    pub fn safety_number(&self, user: String) -> Result<Option<SafetyNumber>, HushError> {
        let user = user_id(&user)?;
        self.with(|m, _| Ok(m.safety_number(&user)?.as_ref().map(SafetyNumber::from)))
    }

    /// The safety number `user` would have with `identity` (32 bytes): for
    /// an identity not trusted yet, such as the one an `IdentityChanged`
    /// event presents, to compare before accepting it.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a bad user id or key.
    pub fn safety_number_with(
        &self,
        user: String,
        identity: Vec<u8>,
    ) -> Result<SafetyNumber, HushError> {
        let user = user_id(&user)?;
        let identity = IdentityKey::from_bytes(&fixed(&identity, "an identity key")?)?;
        self.with(|m, _| {
            let n = hush::fingerprint::SafetyNumber::new(
                &m.address().user,
                &m.identity_key(),
                &user,
                &identity,
            );
            Ok((&n).into())
        })
    }

    /// Closes the device now (named so as not to clash with the `close` of
    /// Kotlin's `AutoCloseable`, which frees the handle): its store is released (another instance may
    /// open it) and every later call on it, its client or its sessions
    /// raises [`HushError::AlreadyUsed`]. Dropping the last reference does
    /// the same; this does not wait for the garbage collector.
    ///
    /// # Errors
    /// [`HushError::Internal`] only.
    pub fn close_store(&self) -> Result<(), HushError> {
        lock(&self.shared)?.mode = Mode::Closed;
        Ok(())
    }

    /// Whether a scanned QR payload matches the safety number with `user`.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a malformed payload or an unknown
    /// user.
    pub fn verify_safety_qr(&self, user: String, payload: Vec<u8>) -> Result<bool, HushError> {
        let user = user_id(&user)?;
        self.with(|m, _| {
            let number = m
                .safety_number(&user)?
                .ok_or_else(|| HushError::invalid(format!("no identity known for {user}")))?;
            Ok(number.matches_qr(&payload)?)
        })
    }

    /// The identity trusted for `user` (32 bytes), if any.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Storage`].
    pub fn trusted_identity(&self, user: String) -> Result<Option<Vec<u8>>, HushError> {
        let user = user_id(&user)?;
        self.with(|m, _| Ok(m.trusted_identity(&user)?.map(|k| k.to_bytes().to_vec())))
    }

    /// Trusts `identity` (from [`HushError::IdentityChanged`] or the
    /// client's `IdentityChanged` event) for `user`, after the user
    /// compared safety numbers. The user's old sessions and devices are
    /// dropped.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Storage`].
    pub fn accept_identity_change(&self, user: String, identity: Vec<u8>) -> Result<(), HushError> {
        let user = user_id(&user)?;
        let identity = IdentityKey::from_bytes(&fixed(&identity, "an identity key")?)?;
        self.with(|m, rng| Ok(m.accept_identity_change(rng, &user, &identity, unix_now())?))
    }

    /// The device ids known for `user`.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Storage`].
    pub fn known_devices(&self, user: String) -> Result<Vec<u32>, HushError> {
        let user = user_id(&user)?;
        self.with(|m, _| {
            Ok(m.known_devices(&user)?
                .iter()
                .map(|c| c.address().device.0)
                .collect())
        })
    }

    /// Messages decrypted but not yet confirmed (after a crash, say).
    ///
    /// # Errors
    /// [`HushError::Storage`].
    pub fn inbox(&self) -> Result<Vec<InboxEntry>, HushError> {
        self.with(|m, _| {
            Ok(m.inbox()?
                .into_iter()
                .map(|e| InboxEntry {
                    sender: (&e.sender).into(),
                    envelope_id: e.envelope_id,
                    plaintext: e.plaintext,
                    received_at: e.received_at,
                })
                .collect())
        })
    }

    /// The protocol client of this device for the reference server at
    /// `server_name` (the name the app dials). The device stays usable and
    /// shares its state with the client; a second call returns a client
    /// over the same state, replacing the first one's connection state.
    /// Messages still in the store's outbox (sent while offline, or not
    /// accepted before the app last exited) go out after login.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for an invalid server name; a store
    /// error reading the outbox closes the device (its state is in the
    /// store: open it again).
    pub fn client(self: Arc<Self>, server_name: String) -> Result<Arc<Client>, HushError> {
        // Checked first: `Client::new` takes the manager with it when it fails.
        hush::wire::protocol::canonical_server_name(&server_name)
            .map_err(|e| HushError::invalid(format!("server name {server_name:?}: {e}")))?;
        let mut inner = lock(&self.shared)?;
        let manager = match std::mem::replace(&mut inner.mode, Mode::Switching) {
            Mode::Manager(m) => m,
            Mode::Client(c) => c.into_manager(),
            Mode::Switching => {
                return Err(HushError::Internal {
                    reason: "the device is being handed to its client".into(),
                });
            }
            Mode::Closed => {
                inner.mode = Mode::Closed;
                return Err(closed());
            }
        };
        let client = match hush::client::Client::new(manager, &server_name, Default::default()) {
            Ok(c) => c,
            Err(e) => {
                // The manager went with the failed call.
                inner.mode = Mode::Closed;
                return Err(e.into());
            }
        };
        inner.mode = Mode::Client(Box::new(client));
        drop(inner);
        Ok(Client::wrap(self.shared.clone()))
    }
}

/// Checks a link code's bytes (hex text is what `hush-cli` shows).
pub(crate) fn link_code(bytes: &[u8]) -> Result<LinkCode, HushError> {
    Ok(LinkCode::from_bytes(bytes)?)
}

/// One peer device's session, bound once so that the hot path passes plain
/// bytes only (no address to convert on every call). Shares the device's
/// state: every call is stored before it returns, as with [`Device`].
#[derive(uniffi::Object)]
pub struct PeerSession {
    shared: Shared,
    peer: hush::keys::DeviceAddress,
}

impl std::fmt::Debug for PeerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSession")
            .field("peer", &self.peer)
            .finish()
    }
}

#[uniffi::export]
impl PeerSession {
    /// The peer device.
    pub fn peer(&self) -> DeviceAddress {
        (&self.peer).into()
    }

    /// Encrypts for the peer. The plaintext is borrowed, not copied, across
    /// the boundary: Python passes `bytes`, Swift `Data`, Kotlin a direct
    /// `ByteBuffer` (`ByteBuffer.allocateDirect`); `Device.encrypt` takes a
    /// plain byte array.
    ///
    /// # Errors
    /// [`HushError::NoSession`], [`HushError::Storage`].
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, HushError> {
        let mut inner = lock(&self.shared)?;
        let (manager, rng) = inner.manager()?;
        Ok(manager.encrypt(rng, &self.peer, plaintext, unix_now())?)
    }

    /// Decrypts a message from the peer (a first message starts the
    /// session). Trust events go to [`Device::take_trust_events`]. The
    /// message is borrowed, as in [`Self::encrypt`].
    ///
    /// # Errors
    /// As [`Device::decrypt`].
    pub fn decrypt(&self, message: &[u8]) -> Result<Vec<u8>, HushError> {
        let mut inner = lock(&self.shared)?;
        let (manager, rng) = inner.manager()?;
        let decrypted = manager.decrypt(rng, &self.peer, message, unix_now())?;
        if !decrypted.events.is_empty() {
            inner.trust_events.extend(TrustEvent::all(decrypted.events));
        }
        Ok(decrypted.plaintext)
    }
}
