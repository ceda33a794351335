//! The sans-IO client against an in-memory test double of the server: two
//! users, one with two devices, no sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::{T0, rng};
use hush::attachment::AttachmentKind;
use hush::client::{
    Client, ClientConfig, ClientEvent, Registration, RegistrationEvent, TransferId,
};
use hush::keys::{
    DeviceAddress, DeviceAuthKey, DeviceAuthKeyPair, DeviceCertificate, DeviceId, IdentityKey,
    IdentityKeyPair, OneTimePreKey, PqPreKeyKind, SignedPqPreKey, SignedPreKey, UserId,
};
use hush::link::{LinkCode, LinkRequest, seal_link};
use hush::session::SessionMessage;
use hush::store::{MemoryStore, StorageKey};
use hush::wire::content::Body;
use hush::wire::frame::{FrameDecoder, encode_frame};
use hush::wire::protocol::{
    BlobId, CHUNK_LEN, ClientFrame, Delivery, EnvelopeId, ErrorCode, LinkToken, MAX_FRAME_LEN,
    Nonce, ProtocolError, ProvisioningAddress, Push, Request, Response, ServerFrame, UploadId,
    verify_auth, verify_registration,
};
use hush::{PreKeyBundle, SessionManager};
use rand_chacha::ChaCha20Rng;

const SERVER: &str = "chat.example.org";

#[derive(Default)]
struct DeviceRecord {
    auth_key: Option<DeviceAuthKey>,
    certificate: Option<DeviceCertificate>,
    signed: Option<SignedPreKey>,
    last_resort: Option<SignedPreKey>,
    one_time: VecDeque<OneTimePreKey>,
    pq_last_resort: Option<SignedPqPreKey>,
    pq_one_time: VecDeque<SignedPqPreKey>,
}

struct Account {
    identity: IdentityKey,
    devices: BTreeMap<DeviceId, DeviceRecord>,
}

struct Conn {
    device: Option<DeviceAddress>,
    provisioning: Option<ProvisioningAddress>,
    nonce: Nonce,
    decoder: FrameDecoder,
    out: VecDeque<Vec<u8>>,
}

/// The test double: accounts, prekeys, device lists, queues, live delivery.
struct Server {
    accounts: BTreeMap<UserId, Account>,
    queues: BTreeMap<DeviceAddress, Vec<Delivery>>,
    conns: BTreeMap<u32, Conn>,
    next_conn: u32,
    rng: ChaCha20Rng,
    /// Attacks: bundles of these devices are replaced by the given bundle.
    forged_bundles: BTreeMap<DeviceAddress, PreKeyBundle>,
    uploads: BTreeMap<UploadId, (u64, Vec<u8>)>,
    blobs: BTreeMap<BlobId, Vec<u8>>,
    permissions: Vec<(UserId, LinkToken)>,
    /// For every initial message relayed: whether it is PQXDH (version 2).
    initial_pq: Vec<bool>,
}

impl Server {
    fn new() -> Self {
        Self {
            accounts: BTreeMap::new(),
            queues: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            rng: rng(1000),
            forged_bundles: BTreeMap::new(),
            uploads: BTreeMap::new(),
            blobs: BTreeMap::new(),
            permissions: Vec::new(),
            initial_pq: Vec::new(),
        }
    }

    /// Registration happens out of band here (the protocol's RegisterAccount
    /// is tested on its own); the device publishes the rest once logged in.
    fn register(&mut self, m: &SessionManager<MemoryStore>) {
        let a = m.address();
        let account = self
            .accounts
            .entry(a.user.clone())
            .or_insert_with(|| Account {
                identity: m.identity_key(),
                devices: BTreeMap::new(),
            });
        account.devices.insert(
            a.device,
            DeviceRecord {
                certificate: Some(m.certificate().clone()),
                ..Default::default()
            },
        );
    }

    fn open(&mut self) -> u32 {
        let id = self.next_conn;
        self.next_conn += 1;
        let nonce = Nonce::random(&mut self.rng);
        let mut conn = Conn {
            device: None,
            provisioning: None,
            nonce,
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            out: VecDeque::new(),
        };
        conn.out
            .push_back(frame(&ServerFrame::Push(Push::Challenge { nonce })));
        self.conns.insert(id, conn);
        id
    }

    fn close(&mut self, id: u32) {
        self.conns.remove(&id);
    }

    fn push_to(&mut self, device: &DeviceAddress, push: Push) {
        for conn in self.conns.values_mut() {
            if conn.device.as_ref() == Some(device) {
                conn.out.push_back(frame(&ServerFrame::Push(push.clone())));
            }
        }
    }

    fn input(&mut self, id: u32, bytes: &[u8]) {
        let conn = self.conns.get_mut(&id).unwrap();
        conn.decoder.push(bytes).unwrap();
        let mut frames = Vec::new();
        while let Some(payload) = conn.decoder.next_frame().unwrap() {
            frames.push(ClientFrame::from_payload(&payload).unwrap());
        }
        for f in frames {
            let before = self.conns[&id].out.len();
            let result = self.handle(id, f.request);
            let out = frame(&ServerFrame::Response { id: f.id, result });
            // The response goes before the pushes the request caused.
            let conn = self.conns.get_mut(&id).unwrap();
            conn.out.insert(before.min(conn.out.len()), out);
        }
    }

    fn output(&mut self, id: u32) -> Option<Vec<u8>> {
        self.conns.get_mut(&id)?.out.pop_front()
    }

    fn bundle(&mut self, address: &DeviceAddress) -> Option<PreKeyBundle> {
        if let Some(forged) = self.forged_bundles.get(address) {
            return Some(forged.clone());
        }
        let account = self.accounts.get_mut(&address.user)?;
        let identity = account.identity;
        let d = account.devices.get_mut(&address.device)?;
        Some(PreKeyBundle {
            identity,
            certificate: d.certificate.clone()?,
            signed_prekey: d.signed.clone()?,
            last_resort_prekey: d.last_resort.clone()?,
            one_time_prekey: d.one_time.pop_front(),
            // A PQ one-time prekey while one is left, else the PQ last resort.
            pq_prekey: d
                .pq_one_time
                .pop_front()
                .or_else(|| d.pq_last_resort.clone()),
        })
    }

    fn handle(&mut self, id: u32, request: Request) -> Result<Response, ProtocolError> {
        let err = |code, m: &str| Err(ProtocolError::new(code, m));
        let me = self.conns[&id].device.clone();
        if let Request::Authenticate { device, signature } = &request {
            let record = self
                .accounts
                .get(&device.user)
                .and_then(|a| a.devices.get(&device.device));
            let Some(auth_key) = record.and_then(|d| {
                d.auth_key
                    .or_else(|| d.certificate.as_ref().map(|c| *c.auth_key()))
            }) else {
                return err(ErrorCode::Unauthenticated, "unknown device");
            };
            let nonce = self.conns[&id].nonce;
            if verify_auth(&auth_key, &nonce, SERVER, signature).is_err() {
                return err(ErrorCode::Unauthenticated, "bad signature");
            }
            self.conns.get_mut(&id).unwrap().device = Some(device.clone());
            for delivery in self.queues.get(device).cloned().unwrap_or_default() {
                self.push_to(device, Push::Deliver(delivery));
            }
            self.push_to(device, Push::QueueEmpty);
            let d = &self.accounts[&device.user].devices[&device.device];
            let (remaining, pq_remaining) = (d.one_time.len() as u32, d.pq_one_time.len() as u32);
            if remaining.min(pq_remaining) < 5 {
                self.push_to(
                    device,
                    Push::PreKeysLow {
                        remaining,
                        pq_remaining,
                    },
                );
            }
            return Ok(Response::Authenticated { server_time: T0 });
        }
        match &request {
            Request::RegisterAccount {
                user,
                identity,
                auth_key,
                signature,
            } => {
                if self.accounts.contains_key(user) {
                    return err(ErrorCode::Conflict, "taken");
                }
                if verify_registration(identity, user, auth_key, SERVER, signature).is_err() {
                    return err(ErrorCode::Unauthenticated, "bad registration signature");
                }
                let mut devices = BTreeMap::new();
                devices.insert(
                    DeviceId(1),
                    DeviceRecord {
                        auth_key: Some(*auth_key),
                        ..Default::default()
                    },
                );
                self.accounts.insert(
                    user.clone(),
                    Account {
                        identity: *identity,
                        devices,
                    },
                );
                return Ok(Response::Registered {
                    device: DeviceId(1),
                });
            }
            Request::RegisterLinkedDevice {
                user,
                auth_key,
                permission,
            } => {
                let Some(at) = self
                    .permissions
                    .iter()
                    .position(|(u, t)| u == user && t == permission)
                else {
                    return err(ErrorCode::Expired, "no such permission");
                };
                self.permissions.remove(at);
                let account = self.accounts.get_mut(user).unwrap();
                let device = DeviceId(account.devices.keys().map(|d| d.0).max().unwrap_or(0) + 1);
                account.devices.insert(
                    device,
                    DeviceRecord {
                        auth_key: Some(*auth_key),
                        ..Default::default()
                    },
                );
                let others: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| *d != device)
                    .collect();
                for d in others {
                    self.push_to(
                        &DeviceAddress::new(user.clone(), d),
                        Push::DevicesChanged { user: user.clone() },
                    );
                }
                return Ok(Response::Registered { device });
            }
            Request::OpenProvisioning => {
                let address = ProvisioningAddress::random(&mut self.rng);
                self.conns.get_mut(&id).unwrap().provisioning = Some(address);
                return Ok(Response::Provisioning { address });
            }
            _ => {}
        }
        let Some(me) = me else {
            return err(ErrorCode::Unauthenticated, "log in first");
        };
        match request {
            Request::PublishCertificate { certificate } => {
                let account = self.accounts.get_mut(&me.user).unwrap();
                if certificate.verify_for(&account.identity, &me).is_err() {
                    return err(ErrorCode::BadRequest, "bad certificate");
                }
                account.devices.entry(me.device).or_default().certificate = Some(certificate);
                let others: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| *d != me.device)
                    .collect();
                for d in others {
                    self.push_to(
                        &DeviceAddress::new(me.user.clone(), d),
                        Push::DevicesChanged {
                            user: me.user.clone(),
                        },
                    );
                }
                Ok(Response::Ok)
            }
            Request::PublishPreKeys {
                signed,
                last_resort,
                one_time,
                pq_last_resort,
                pq_one_time,
            } => {
                let account = self.accounts.get_mut(&me.user).unwrap();
                let identity = account.identity;
                let d = account.devices.entry(me.device).or_default();
                for k in signed.iter().chain(last_resort.iter()) {
                    if k.verify(&identity, &me).is_err() {
                        return err(ErrorCode::BadRequest, "bad prekey signature");
                    }
                }
                let pq_kinds = pq_last_resort
                    .iter()
                    .map(|k| (k, PqPreKeyKind::LastResort))
                    .chain(pq_one_time.iter().map(|k| (k, PqPreKeyKind::OneTime)));
                for (k, kind) in pq_kinds {
                    if k.kind() != kind || k.verify(&identity, &me).is_err() {
                        return err(ErrorCode::BadRequest, "bad PQ prekey signature");
                    }
                }
                if pq_last_resort.is_some() {
                    d.pq_last_resort = pq_last_resort;
                }
                d.pq_one_time.extend(pq_one_time);
                if signed.is_some() {
                    d.signed = signed;
                }
                if last_resort.is_some() {
                    d.last_resort = last_resort;
                }
                d.one_time.extend(one_time);
                Ok(Response::Ok)
            }
            Request::FetchBundles { user, devices } => {
                let Some(account) = self.accounts.get(&user) else {
                    return err(ErrorCode::NotFound, "no such user");
                };
                let ids: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| devices.is_empty() || devices.contains(d))
                    .collect();
                let bundles = ids
                    .into_iter()
                    .filter_map(|d| self.bundle(&DeviceAddress::new(user.clone(), d)))
                    .collect();
                Ok(Response::Bundles(bundles))
            }
            Request::ListDevices { user } => Ok(Response::Devices(
                self.accounts
                    .get(&user)
                    .map(|a| {
                        a.devices
                            .values()
                            .filter_map(|d| d.certificate.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            Request::Send {
                recipient,
                envelopes,
            } => {
                let Some(account) = self.accounts.get(&recipient) else {
                    return err(ErrorCode::NotFound, "no such user");
                };
                let expected: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| !(recipient == me.user && *d == me.device))
                    .collect();
                let given: Vec<DeviceId> = envelopes.iter().map(|(d, _)| *d).collect();
                let missing: Vec<DeviceId> = expected
                    .iter()
                    .copied()
                    .filter(|d| !given.contains(d))
                    .collect();
                let extra: Vec<DeviceId> = given
                    .iter()
                    .copied()
                    .filter(|d| !expected.contains(d))
                    .collect();
                if !missing.is_empty() || !extra.is_empty() {
                    return Ok(Response::MismatchedDevices { missing, extra });
                }
                let mut ids = Vec::new();
                for (device, envelope) in envelopes {
                    if envelope.sender() != &me {
                        return err(ErrorCode::Forbidden, "sender mismatch");
                    }
                    if let Ok(SessionMessage::Initial { header, .. }) =
                        SessionMessage::from_bytes(envelope.message())
                    {
                        self.initial_pq.push(header.prekeys.kem().is_some());
                    }
                    let to = DeviceAddress::new(recipient.clone(), device);
                    let delivery = Delivery {
                        id: EnvelopeId::random(&mut self.rng),
                        sender: me.clone(),
                        server_time: T0,
                        envelope,
                    };
                    ids.push((device, delivery.id));
                    self.queues
                        .entry(to.clone())
                        .or_default()
                        .push(delivery.clone());
                    self.push_to(&to, Push::Deliver(delivery));
                }
                Ok(Response::Sent {
                    server_time: T0,
                    ids,
                })
            }
            Request::Ack { envelopes } => {
                if let Some(q) = self.queues.get_mut(&me) {
                    q.retain(|d| !envelopes.contains(&d.id));
                }
                Ok(Response::Ok)
            }
            Request::UploadBegin { kind, size } => {
                if size > kind.max_ciphertext_len() {
                    return err(ErrorCode::TooLarge, "over the cap of its kind");
                }
                let upload = UploadId::random(&mut self.rng);
                self.uploads.insert(upload, (size, Vec::new()));
                Ok(Response::UploadStarted { upload })
            }
            Request::UploadChunk {
                upload,
                offset,
                data,
            } => {
                let Some((size, blob)) = self.uploads.get_mut(&upload) else {
                    return err(ErrorCode::NotFound, "no such upload");
                };
                if offset != blob.len() as u64 || blob.len() as u64 + data.len() as u64 > *size {
                    return err(ErrorCode::BadRequest, "out of order or too long");
                }
                blob.extend_from_slice(&data);
                Ok(Response::Ok)
            }
            Request::UploadFinish { upload } => {
                let Some((size, blob)) = self.uploads.remove(&upload) else {
                    return err(ErrorCode::NotFound, "no such upload");
                };
                if blob.len() as u64 != size {
                    return err(ErrorCode::BadRequest, "short upload");
                }
                let id = BlobId::random(&mut self.rng);
                self.blobs.insert(id, blob);
                Ok(Response::Uploaded { blob: id })
            }
            Request::Download { blob, offset } => {
                let Some(bytes) = self.blobs.get(&blob) else {
                    return err(ErrorCode::NotFound, "no such blob");
                };
                let start = (offset as usize).min(bytes.len());
                let end = (start + CHUNK_LEN).min(bytes.len());
                Ok(Response::DownloadChunk {
                    total: bytes.len() as u64,
                    offset,
                    data: bytes[start..end].to_vec(),
                })
            }
            Request::ReplaceIdentity {
                identity,
                signature,
            } => {
                let account = self.accounts.get_mut(&me.user).unwrap();
                let auth_key = account.devices[&me.device]
                    .auth_key
                    .or_else(|| {
                        account.devices[&me.device]
                            .certificate
                            .as_ref()
                            .map(|c| *c.auth_key())
                    })
                    .unwrap();
                if verify_registration(&identity, &me.user, &auth_key, SERVER, &signature).is_err()
                {
                    return err(ErrorCode::Unauthenticated, "bad signature");
                }
                account.identity = identity;
                let others: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| *d != me.device)
                    .collect();
                for d in others {
                    account.devices.remove(&d);
                    let gone = DeviceAddress::new(me.user.clone(), d);
                    self.queues.remove(&gone);
                    for conn in self.conns.values_mut() {
                        if conn.device.as_ref() == Some(&gone) {
                            conn.device = None;
                        }
                    }
                }
                Ok(Response::Ok)
            }
            Request::RequestLinkPermission => {
                let token = LinkToken::random(&mut self.rng);
                self.permissions.push((me.user.clone(), token));
                Ok(Response::LinkPermission {
                    token,
                    expires_at: T0 + 600,
                })
            }
            Request::SendProvisioning { address, sealed } => {
                for conn in self.conns.values_mut() {
                    if conn.provisioning == Some(address) {
                        conn.out
                            .push_back(frame(&ServerFrame::Push(Push::Provisioning {
                                sealed: sealed.clone(),
                            })));
                    }
                }
                Ok(Response::Ok)
            }
            Request::RemoveDevice { device } => {
                let account = self.accounts.get_mut(&me.user).unwrap();
                account.devices.remove(&device);
                // As the real server: the account's other devices are told,
                // the one that asked learns from the answer.
                let others: Vec<DeviceId> = account
                    .devices
                    .keys()
                    .copied()
                    .filter(|d| *d != me.device)
                    .collect();
                self.queues
                    .remove(&DeviceAddress::new(me.user.clone(), device));
                for d in others {
                    self.push_to(
                        &DeviceAddress::new(me.user.clone(), d),
                        Push::DevicesChanged {
                            user: me.user.clone(),
                        },
                    );
                }
                Ok(Response::Ok)
            }
            Request::Ping => Ok(Response::Pong),
            _ => err(ErrorCode::BadRequest, "not in the test double"),
        }
    }

    fn queued(&self, device: &DeviceAddress) -> usize {
        self.queues.get(device).map_or(0, Vec::len)
    }
}

fn frame(f: &ServerFrame) -> Vec<u8> {
    encode_frame(&f.to_payload(), MAX_FRAME_LEN).unwrap()
}

/// One device: its client, its connection and the events it has seen.
struct Dev {
    client: Client<MemoryStore>,
    key: StorageKey,
    conn: Option<u32>,
    events: Vec<ClientEvent>,
    rng: ChaCha20Rng,
}

impl Dev {
    fn new(
        server: &mut Server,
        identity: &IdentityKeyPair,
        user: &str,
        device: u32,
        seed: u64,
    ) -> Self {
        let mut r = rng(seed);
        let key = StorageKey::generate(&mut r);
        let m = SessionManager::create(
            MemoryStore::new(),
            &key,
            IdentityKeyPair::from_seed_bytes(&identity.to_seed_bytes()),
            DeviceAuthKeyPair::generate(&mut r),
            UserId::new(user).unwrap(),
            DeviceId(device),
            Default::default(),
            &mut r,
            T0,
        )
        .unwrap();
        server.register(&m);
        let client = Client::new(m, SERVER, ClientConfig::default()).unwrap();
        Self {
            client,
            key,
            conn: None,
            events: Vec::new(),
            rng: r,
        }
    }

    fn address(&self) -> DeviceAddress {
        self.client.manager().address().clone()
    }

    fn connect(&mut self, server: &mut Server) {
        self.conn = Some(server.open());
        self.client.handle_connected(T0);
    }

    fn disconnect(&mut self, server: &mut Server) {
        if let Some(c) = self.conn.take() {
            server.close(c);
        }
    }

    /// The device crashes and restarts from its store.
    fn crash_and_restart(&mut self, server: &mut Server) {
        self.disconnect(server);
        let store = self.client.manager().store().clone();
        let m = SessionManager::open(store, &self.key).unwrap();
        self.client = Client::new(m, SERVER, ClientConfig::default()).unwrap();
        self.events.clear();
        self.connect(server);
    }

    fn texts(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message { content, .. } => match &content.body {
                    Body::Text(t) => Some(t.clone()),
                    Body::SentSync { content, .. } => match &content.body {
                        Body::Text(t) => Some(format!("sync:{t}")),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Confirms every message event seen so far.
    fn confirm_all(&mut self) {
        let ids: Vec<EnvelopeId> = self
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message { envelope_id, .. } => Some(*envelope_id),
                _ => None,
            })
            .collect();
        for id in ids {
            self.client.confirm(&id).unwrap();
        }
    }
}

/// Moves bytes both ways until nothing moves.
fn pump(server: &mut Server, devs: &mut [&mut Dev]) {
    for _ in 0..1000 {
        let mut moved = false;
        for dev in devs.iter_mut() {
            let Some(c) = dev.conn else { continue };
            while let Some(bytes) = dev.client.poll_transmit() {
                server.input(c, &bytes);
                moved = true;
            }
            while let Some(bytes) = server.output(c) {
                dev.client.handle_input(&mut dev.rng, &bytes, T0).unwrap();
                moved = true;
            }
            while let Some(e) = dev.client.poll_event() {
                dev.events.push(e);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the exchange did not settle");
}

fn has(dev: &Dev, f: impl Fn(&ClientEvent) -> bool) -> bool {
    dev.events.iter().any(f)
}

struct World {
    server: Server,
    alice_identity: IdentityKeyPair,
    alice1: Dev,
    bob: Dev,
}

fn world() -> World {
    let mut server = Server::new();
    let mut r = rng(1);
    let alice_identity = IdentityKeyPair::generate(&mut r);
    let bob_identity = IdentityKeyPair::generate(&mut r);
    let mut alice1 = Dev::new(&mut server, &alice_identity, "alice", 1, 11);
    let mut bob = Dev::new(&mut server, &bob_identity, "bob", 1, 21);
    alice1.connect(&mut server);
    bob.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    for d in [&alice1, &bob] {
        assert!(has(d, |e| matches!(e, ClientEvent::Authenticated)));
        assert!(has(d, |e| matches!(
            e,
            ClientEvent::PreKeysReplenished {
                count: 50,
                pq_count: 50
            }
        )));
    }
    World {
        server,
        alice_identity,
        alice1,
        bob,
    }
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// On `PreKeysLow` the client tops up the kind with fewer keys left, and any
/// kind with less than one batch left, never the other (which could pass
/// the server's cap).
#[test]
fn prekeys_low_replenishes_the_kind_that_runs_low() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    let published = |server: &Server| {
        let d = &server.accounts[&user("alice")].devices[&DeviceId(1)];
        (d.one_time.len(), d.pq_one_time.len())
    };
    assert_eq!(published(&server), (50, 50));
    for (remaining, pq_remaining, count, pq_count) in [
        (900, 3, 0, 50),
        (2, 900, 50, 0),
        (20, 30, 50, 50),
        (60, 60, 50, 50),
    ] {
        alice1.events.clear();
        let before = published(&server);
        server.push_to(
            &alice1.address(),
            Push::PreKeysLow {
                remaining,
                pq_remaining,
            },
        );
        pump(&mut server, &mut [&mut alice1, &mut bob]);
        assert!(
            has(&alice1, |e| matches!(
                e,
                ClientEvent::PreKeysReplenished { count: c, pq_count: p }
                    if (*c, *p) == (count, pq_count)
            )),
            "{remaining}/{pq_remaining}: {:?}",
            alice1.events
        );
        assert_eq!(published(&server), (before.0 + count, before.1 + pq_count));
    }
}

#[test]
fn messages_flow_both_ways_and_are_acked_only_after_confirm() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "hi Bob", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["hi Bob"]);
    assert!(has(
        &alice1,
        |e| matches!(e, ClientEvent::Sent { recipient, .. } if recipient.as_str() == "bob")
    ));
    assert_eq!(server.queued(&bob.address()), 1, "not acked before confirm");
    bob.confirm_all();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(server.queued(&bob.address()), 0);

    bob.client
        .send_text(&mut bob.rng, &user("alice"), "hi Alice", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(alice1.texts(), vec!["hi Alice"]);
    // Sessions made through the client are PQXDH, on a PQ one-time prekey
    // each (the default refuses bundles without a PQ prekey).
    assert!(!server.initial_pq.is_empty());
    assert!(
        server.initial_pq.iter().all(|&pq| pq),
        "{:?}",
        server.initial_pq
    );
    let left = |d: &Dev| {
        server.accounts[&d.address().user].devices[&d.address().device]
            .pq_one_time
            .len()
    };
    assert_eq!(
        left(&bob),
        49,
        "Alice's session used one of Bob's PQ one-time prekeys"
    );
    assert_eq!(left(&alice1), 50, "Bob answered in Alice's session");
}

#[test]
fn a_second_device_sees_sent_messages_and_is_picked_up_by_the_peer() {
    let World {
        mut server,
        alice_identity,
        mut alice1,
        mut bob,
    } = world();
    alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "before", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["before"]);

    // Alice links a second device mid-conversation: its code goes out of
    // band, alice.1 seals the account identity to it, and the server only
    // relays sealed bytes. A message the server seals itself does not open.
    let mut r = rng(12);
    let request = LinkRequest::new(&mut r);
    let code = request
        .code(SERVER, ProvisioningAddress::random(&mut r))
        .unwrap();
    let scanned = LinkCode::from_bytes(&code.to_bytes()).unwrap();
    let permission = LinkToken::random(&mut r);
    let identity = alice1.client.manager().identity_key_pair();
    let sealed = seal_link(
        &mut r,
        &scanned,
        SERVER,
        identity,
        &user("alice"),
        &permission,
    )
    .unwrap();
    let server_own = LinkRequest::new(&mut r)
        .code(SERVER, *code.address())
        .unwrap();
    let fake = IdentityKeyPair::generate(&mut r);
    let forged = seal_link(
        &mut r,
        &server_own,
        SERVER,
        &fake,
        &user("alice"),
        &permission,
    )
    .unwrap();
    assert!(request.open_code(&code, &forged).is_err());
    let linked = request.open_code(&code, &sealed).unwrap();
    assert_eq!(linked.identity.public_key(), alice_identity.public_key());
    let mut alice2 = Dev::new(&mut server, &linked.identity, "alice", 2, 12);
    alice2.connect(&mut server);
    server.push_to(
        &alice1.address(),
        Push::DevicesChanged {
            user: user("alice"),
        },
    );
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    assert!(has(
        &alice1,
        |e| matches!(e, ClientEvent::Trust(hush::Event::DeviceAdded(a)) if a.device.0 == 2)
    ));

    // Bob's next message: the server reports alice.2 missing; Bob fetches its
    // bundle, checks its certificate under Alice's identity and retries.
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "to both", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    assert_eq!(alice1.texts(), vec!["to both"]);
    assert_eq!(alice2.texts(), vec!["to both"]);
    assert!(has(
        &bob,
        |e| matches!(e, ClientEvent::Trust(hush::Event::DeviceAdded(a)) if a.device.0 == 2)
    ));
    assert!(has(&bob, |e| matches!(e, ClientEvent::Sent { .. })));

    // What alice.1 sends reaches Bob, and a copy reaches alice.2.
    alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "from one", T0)
        .unwrap();
    assert!(alice1.client.has_pending_sends());
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    // Settled once the copy for alice.2 is stored too, which has no `Sent`.
    assert!(!alice1.client.has_pending_sends());
    assert_eq!(bob.texts(), vec!["before", "from one"]);
    assert_eq!(alice2.texts(), vec!["to both", "sync:from one"]);
}

#[test]
fn a_ghost_device_and_moved_prekeys_are_refused() {
    let World {
        mut server,
        alice_identity,
        mut alice1,
        mut bob,
    } = world();
    let alice_key = alice_identity.public_key();
    // The server adds a device to Alice's account, certified by its own key
    // but presented under Alice's identity.
    let mut r = rng(77);
    let mallory = IdentityKeyPair::generate(&mut r);
    let mut ghost = Dev::new(&mut Server::new(), &mallory, "alice", 7, 13);
    ghost
        .client
        .manager_mut()
        .generate_one_time_prekeys(&mut r, 1)
        .unwrap();
    let ghost_bundle = PreKeyBundle {
        identity: alice_key,
        ..ghost.client.manager().bundle().unwrap()
    };
    server
        .accounts
        .get_mut(&user("alice"))
        .unwrap()
        .devices
        .insert(DeviceId(7), DeviceRecord::default());
    server
        .forged_bundles
        .insert(DeviceAddress::new(user("alice"), DeviceId(7)), ghost_bundle);

    bob.client
        .send_text(&mut bob.rng, &user("alice"), "secret", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert!(has(
        &bob,
        |e| matches!(e, ClientEvent::DeviceRefused(a) if a.device.0 == 7)
    ));
    assert!(has(&bob, |e| matches!(
        e,
        ClientEvent::DeliveryFailed { .. }
    )));
    assert!(
        alice1.texts().is_empty(),
        "nothing was sent while the list was forged"
    );
    let known = bob.client.manager().known_devices(&user("alice")).unwrap();
    assert!(known.iter().all(|c| c.address().device.0 != 7));

    // Alice really has a device 8; the server serves alice.1's prekeys under
    // it. The prekey signatures cover the device id: refused as well.
    server
        .accounts
        .get_mut(&user("alice"))
        .unwrap()
        .devices
        .remove(&DeviceId(7));
    server.forged_bundles.clear();
    let alice8 = Dev::new(&mut server, &alice_identity, "alice", 8, 15);
    let moved = PreKeyBundle {
        certificate: alice8.client.manager().certificate().clone(),
        ..server.bundle(&alice1.address()).unwrap()
    };
    server.forged_bundles.insert(alice8.address(), moved);
    bob.events.clear();
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "again", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert!(has(
        &bob,
        |e| matches!(e, ClientEvent::DeviceRefused(a) if a.device.0 == 8)
    ));
    assert!(has(&bob, |e| matches!(
        e,
        ClientEvent::DeliveryFailed { .. }
    )));
    assert!(alice1.texts().is_empty());
}

#[test]
fn an_offline_device_catches_up_and_duplicates_are_dropped() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    bob.disconnect(&mut server);
    for i in 0..3 {
        alice1
            .client
            .send_text(&mut alice1.rng, &user("bob"), &format!("m{i}"), T0)
            .unwrap();
    }
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(server.queued(&bob.address()), 3);
    bob.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["m0", "m1", "m2"]);
    assert!(has(&bob, |e| matches!(e, ClientEvent::QueueEmpty)));
    bob.confirm_all();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(server.queued(&bob.address()), 0);

    // The server delivers one of them again: it is acked, not shown again.
    let again = bob.events.iter().find_map(|e| match e {
        ClientEvent::Message { envelope_id, .. } => Some(*envelope_id),
        _ => None,
    });
    let again = again.unwrap();
    let stored = Delivery {
        id: again,
        sender: alice1.address(),
        server_time: T0,
        envelope: hush::wire::envelope::Envelope::new(alice1.address(), vec![2, 0]).unwrap(),
    };
    bob.events.clear();
    server.push_to(&bob.address(), Push::Deliver(stored));
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert!(
        bob.texts().is_empty(),
        "a processed envelope is not decrypted again"
    );
    assert!(!has(&bob, |e| matches!(
        e,
        ClientEvent::Undecryptable { .. }
    )));
}

#[test]
fn a_crash_between_the_message_and_confirm_shows_the_same_plaintext_again() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "keep me", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["keep me"]);
    bob.crash_and_restart(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(
        bob.texts(),
        vec!["keep me"],
        "redelivered, served from the inbox"
    );
    bob.confirm_all();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(server.queued(&bob.address()), 0);
    // And the conversation goes on.
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "got it", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(alice1.texts(), vec!["got it"]);
}

/// Feeds `data` to an upload in 1 MiB pieces, moving bytes in between.
fn upload(
    server: &mut Server,
    dev: &mut Dev,
    others: &mut [&mut Dev],
    data: &[u8],
) -> hush::attachment::AttachmentPointer {
    let t = dev
        .client
        .begin_upload(
            &mut dev.rng,
            AttachmentKind::File,
            "application/octet-stream",
            data.len() as u64,
        )
        .unwrap();
    pump_with(server, dev, others);
    assert!(
        dev.events
            .iter()
            .any(|e| matches!(e, ClientEvent::UploadReady(x) if *x == t))
    );
    for piece in data.chunks(1 << 20) {
        dev.client.upload(t, piece).unwrap();
        pump_with(server, dev, others);
    }
    dev.client.finish_upload(t).unwrap();
    pump_with(server, dev, others);
    let at = dev
        .events
        .iter()
        .position(|e| matches!(e, ClientEvent::Uploaded { transfer, .. } if *transfer == t));
    match dev.events.remove(at.expect("uploaded")) {
        ClientEvent::Uploaded { pointer, .. } => pointer,
        _ => unreachable!(),
    }
}

fn pump_with(server: &mut Server, dev: &mut Dev, others: &mut [&mut Dev]) {
    let mut all: Vec<&mut Dev> = vec![dev];
    all.extend(others.iter_mut().map(|d| &mut **d));
    pump(server, &mut all);
}

/// The bytes a download released, and whether it completed.
fn downloaded(dev: &Dev, t: TransferId) -> (Vec<u8>, Option<bool>) {
    let mut data = Vec::new();
    let mut done = None;
    for e in &dev.events {
        match e {
            ClientEvent::AttachmentData { transfer, data: d } if *transfer == t => {
                data.extend_from_slice(&d.0)
            }
            ClientEvent::Downloaded(x) if *x == t => done = Some(true),
            ClientEvent::TransferFailed { transfer, .. } if *transfer == t => done = Some(false),
            _ => {}
        }
    }
    (data, done)
}

#[test]
fn a_20_mib_attachment_round_trips_and_a_tampered_one_fails() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    let data: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let pointer = upload(&mut server, &mut alice1, &mut [&mut bob], &data);
    let blob_len = server.blobs.values().next().unwrap().len();
    assert_eq!(blob_len as u64, pointer.ciphertext_len());

    alice1
        .client
        .send(
            &mut alice1.rng,
            &user("bob"),
            Body::Attachment {
                pointer,
                caption: Some("big".into()),
            },
            T0,
        )
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let received = bob.events.iter().find_map(|e| match e {
        ClientEvent::Message { content, .. } => match &content.body {
            Body::Attachment { pointer, .. } => {
                Some(hush::attachment::AttachmentPointer::from_bytes(&pointer.to_bytes()).unwrap())
            }
            _ => None,
        },
        _ => None,
    });
    let received = received.expect("the pointer arrived end to end");
    let t = bob.client.begin_download(&received).unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let (got, done) = downloaded(&bob, t);
    assert_eq!(done, Some(true));
    assert!(got == data, "20 MiB came back intact");

    // The server flips one byte in the middle of the stored blob.
    let blob = server.blobs.values_mut().next().unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 1;
    let t = bob.client.begin_download(&received).unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let (got, done) = downloaded(&bob, t);
    assert_eq!(done, Some(false), "a tampered blob fails");
    assert!(
        got.len() < data.len() / 2 + (1 << 16),
        "nothing past the damaged chunk was released"
    );
    assert!(
        data.starts_with(&got),
        "what was released before it is authentic"
    );
}

#[test]
fn timers_ping_rotate_and_publish_prekeys() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    let first = server.accounts[&user("alice")].devices[&DeviceId(1)]
        .signed
        .clone()
        .unwrap();
    let first_pq = server.accounts[&user("alice")].devices[&DeviceId(1)]
        .pq_last_resort
        .clone()
        .unwrap();
    let due = alice1.client.poll_timeout().unwrap();
    assert_eq!(due, T0 + ClientConfig::default().ping_interval);
    // Eight days later: a ping, a rotation, and the new prekeys published.
    let later = T0 + 8 * 24 * 3600;
    alice1
        .client
        .handle_timeout(&mut alice1.rng, later)
        .unwrap();
    assert!(alice1.client.poll_timeout().unwrap() > later);
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let now_published = server.accounts[&user("alice")].devices[&DeviceId(1)]
        .signed
        .clone()
        .unwrap();
    assert_ne!(now_published.id(), first.id());
    // The PQ last-resort prekey rotates and is published with them.
    let pq_published = server.accounts[&user("alice")].devices[&DeviceId(1)]
        .pq_last_resort
        .clone()
        .unwrap();
    assert_ne!(pq_published.id(), first_pq.id());
    assert!(!has(&alice1, |e| matches!(e, ClientEvent::ServerError(_))));
    // A new correspondent starts on the new prekeys.
    let mut carol = Dev::new(
        &mut server,
        &IdentityKeyPair::generate(&mut rng(5)),
        "carol",
        1,
        31,
    );
    carol.connect(&mut server);
    carol
        .client
        .send_text(&mut carol.rng, &user("alice"), "hello", later)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut carol]);
    assert_eq!(alice1.texts(), vec!["hello"]);
}

/// Runs an unauthenticated registration or provisioning connection until it
/// produces an event.
fn drive(server: &mut Server, conn: u32, reg: &mut Registration) -> RegistrationEvent {
    for _ in 0..100 {
        while let Some(bytes) = server.output(conn) {
            reg.handle_input(&bytes).unwrap();
        }
        if let Some(e) = reg.poll_event() {
            return e;
        }
        let mut moved = false;
        while let Some(bytes) = reg.poll_transmit() {
            server.input(conn, &bytes);
            moved = true;
        }
        if !moved && server.conns[&conn].out.is_empty() {
            break;
        }
    }
    panic!("no registration event");
}

fn client_for(
    identity: IdentityKeyPair,
    auth: DeviceAuthKeyPair,
    name: &str,
    device: DeviceId,
    seed: u64,
) -> Dev {
    let mut r = rng(seed);
    let key = StorageKey::generate(&mut r);
    let m = SessionManager::create(
        MemoryStore::new(),
        &key,
        identity,
        auth,
        user(name),
        device,
        Default::default(),
        &mut r,
        T0,
    )
    .unwrap();
    Dev {
        client: Client::new(m, SERVER, ClientConfig::default()).unwrap(),
        key,
        conn: None,
        events: Vec::new(),
        rng: r,
    }
}

/// The whole life of a second device over the protocol: an account is
/// registered, a new device shows its code, the first device sends it the
/// account, the new device registers and receives messages, and once removed
/// it gets nothing more and the peer drops it.
#[test]
fn register_link_and_remove_devices_over_the_protocol() {
    let mut server = Server::new();
    let mut r = rng(90);

    // Alice's first device creates the account.
    let identity = IdentityKeyPair::generate(&mut r);
    let auth = DeviceAuthKeyPair::generate(&mut r);
    let conn = server.open();
    let mut reg = Registration::new_account(&identity, &auth, user("alice"), SERVER).unwrap();
    let got = drive(&mut server, conn, &mut reg);
    let RegistrationEvent::Registered(device) = got else {
        let other = got;
        panic!("not registered: {other:?}")
    };
    server.close(conn);
    let mut alice1 = client_for(identity, auth, "alice", device, 91);
    alice1.connect(&mut server);
    // The same name again is refused.
    let conn = server.open();
    let (other_id, other_auth) = (
        IdentityKeyPair::generate(&mut r),
        DeviceAuthKeyPair::generate(&mut r),
    );
    let mut taken =
        Registration::new_account(&other_id, &other_auth, user("alice"), SERVER).unwrap();
    assert!(matches!(
        drive(&mut server, conn, &mut taken),
        RegistrationEvent::Refused(_)
    ));
    server.close(conn);

    let bob_identity = IdentityKeyPair::generate(&mut r);
    let mut bob = Dev::new(&mut server, &bob_identity, "bob", 1, 92);
    bob.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob]);

    // A new device of Alice's waits for its link message.
    let waiting = server.open();
    let mut provisioning = Registration::provisioning(&mut r, SERVER).unwrap();
    let RegistrationEvent::ShowCode(code) = drive(&mut server, waiting, &mut provisioning) else {
        panic!("no code")
    };
    let scanned = LinkCode::from_bytes(&code.to_bytes()).unwrap(); // out of band
    alice1.client.request_link_permission();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let token = alice1.events.iter().find_map(|e| match e {
        ClientEvent::LinkPermission(t) => Some(*t),
        _ => None,
    });
    alice1
        .client
        .send_link(&mut alice1.rng, &scanned, &token.unwrap())
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    let RegistrationEvent::Linked(linked) = drive(&mut server, waiting, &mut provisioning) else {
        panic!("not linked")
    };
    server.close(waiting);
    let auth2 = DeviceAuthKeyPair::generate(&mut r);
    let conn = server.open();
    let mut reg2 = Registration::linked_device(&linked, &auth2, SERVER).unwrap();
    let RegistrationEvent::Registered(device2) = drive(&mut server, conn, &mut reg2) else {
        panic!("not registered")
    };
    server.close(conn);
    // The permission was single use.
    let conn = server.open();
    let mut again =
        Registration::linked_device(&linked, &DeviceAuthKeyPair::generate(&mut r), SERVER).unwrap();
    assert!(matches!(
        drive(&mut server, conn, &mut again),
        RegistrationEvent::Refused(_)
    ));
    server.close(conn);
    let linked = *linked;
    let mut alice2 = client_for(linked.identity, auth2, "alice", device2, 93);
    alice2.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);

    bob.client
        .send_text(&mut bob.rng, &user("alice"), "to both", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    assert_eq!(alice1.texts(), vec!["to both"]);
    assert_eq!(alice2.texts(), vec!["to both"]);

    // Alice removes the second device from the first.
    alice1.client.remove_device(device2);
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    assert!(has(
        &alice1,
        |e| matches!(e, ClientEvent::Trust(hush::Event::DeviceRemoved(a)) if a.device == device2)
    ));
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "only one", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut alice2]);
    assert_eq!(alice1.texts(), vec!["to both", "only one"]);
    assert_eq!(alice2.texts(), vec!["to both"]);
    assert!(has(
        &bob,
        |e| matches!(e, ClientEvent::Trust(hush::Event::DeviceRemoved(a)) if a.device == device2)
    ));
    assert!(has(&bob, |e| matches!(e, ClientEvent::Sent { .. })));
}

/// A stolen device holds the account identity; replacing it locks the thief
/// out: the server drops the other devices, peers see the change, and a device
/// certified by the old identity is refused once they accepted it.
#[test]
fn replacing_the_account_identity_locks_out_a_stolen_device() {
    let World {
        mut server,
        alice_identity,
        mut alice1,
        mut bob,
    } = world();
    let mut stolen = Dev::new(&mut server, &alice_identity, "alice", 2, 40);
    stolen.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "before", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    assert_eq!(stolen.texts(), vec!["before"]);

    let mut r = rng(41);
    let new_identity = IdentityKeyPair::generate(&mut r);
    let new_key = new_identity.public_key();
    alice1
        .client
        .replace_account_identity(&mut alice1.rng, new_identity, T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    assert_eq!(server.accounts[&user("alice")].identity, new_key);
    assert_eq!(server.accounts[&user("alice")].devices.len(), 1);
    assert!(!has(&alice1, |e| matches!(e, ClientEvent::ServerError(_))));

    // Bob still sends on his session: the server drops the stolen device from
    // the list, and alice.1 still decrypts what is on its way.
    bob.client
        .send_text(&mut bob.rng, &user("alice"), "in transit", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    assert_eq!(alice1.texts(), vec!["before", "in transit"]);
    assert_eq!(stolen.texts(), vec!["before"]);

    // Alice's next message starts a new session under the new identity: Bob
    // is told, and accepts only when he chooses to.
    alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "new me", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    let change = bob.events.iter().find_map(|e| match e {
        ClientEvent::IdentityChanged(c) => Some(c.clone()),
        _ => None,
    });
    let change = change.expect("Bob sees the identity change");
    assert_eq!(change.received, new_key);
    assert!(!bob.texts().contains(&"new me".to_owned()));
    bob.client
        .manager_mut()
        .accept_identity_change(&mut bob.rng, &user("alice"), &new_key, T0)
        .unwrap();
    bob.disconnect(&mut server);
    bob.connect(&mut server);
    pump(&mut server, &mut [&mut alice1, &mut bob, &mut stolen]);
    assert!(
        bob.texts().contains(&"new me".to_owned()),
        "redelivered after the user accepted"
    );

    // A device certified by the old identity is now refused.
    let ghost_bundle = stolen.client.manager().bundle().unwrap();
    let got = bob
        .client
        .manager_mut()
        .start_session(&mut bob.rng, &ghost_bundle, T0);
    assert!(
        matches!(got, Err(hush::Error::IdentityChanged(_))),
        "{got:?}"
    );
}

/// Decodes every frame the client wants to write.
fn sent_requests(client: &mut Client<MemoryStore>) -> Vec<ClientFrame> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut frames = Vec::new();
    while let Some(bytes) = client.poll_transmit() {
        decoder.push(&bytes).unwrap();
        while let Some(payload) = decoder.next_frame().unwrap() {
            frames.push(ClientFrame::from_payload(&payload).unwrap());
        }
    }
    frames
}

fn drain_events(client: &mut Client<MemoryStore>) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn has_queue_empty(events: &[ClientEvent]) -> bool {
    events.iter().any(|e| matches!(e, ClientEvent::QueueEmpty))
}

/// A device is reachable once its certificate is listed, so at login the
/// prekeys go first, and `QueueEmpty` (which hosts take as "ready") waits
/// until both publications are answered, whatever order the server's
/// queue-drained push comes in.
#[test]
fn queue_empty_waits_for_the_login_publications() {
    for fail_prekeys in [false, true] {
        let mut dev = client_for(
            IdentityKeyPair::generate(&mut rng(140)),
            DeviceAuthKeyPair::generate(&mut rng(141)),
            "alice",
            DeviceId(1),
            142,
        );
        let c = &mut dev.client;
        let r = &mut dev.rng;
        c.handle_connected(T0);
        let nonce = Nonce::random(&mut rng(143));
        c.handle_input(r, &frame(&ServerFrame::Push(Push::Challenge { nonce })), T0)
            .unwrap();
        let login = sent_requests(c);
        assert!(matches!(
            login[..],
            [ClientFrame {
                request: Request::Authenticate { .. },
                ..
            }]
        ));
        let answer = |id, result| frame(&ServerFrame::Response { id, result });
        c.handle_input(
            r,
            &answer(login[0].id, Ok(Response::Authenticated { server_time: T0 })),
            T0,
        )
        .unwrap();
        let after = sent_requests(c);
        let prekeys = after
            .iter()
            .position(|f| {
                matches!(
                    f.request,
                    Request::PublishPreKeys {
                        signed: Some(_),
                        ..
                    }
                )
            })
            .expect("signed prekeys published at login");
        let certificate = after
            .iter()
            .position(|f| matches!(f.request, Request::PublishCertificate { .. }))
            .expect("certificate published at login");
        assert!(prekeys < certificate, "prekeys go before the certificate");

        c.handle_input(r, &frame(&ServerFrame::Push(Push::QueueEmpty)), T0)
            .unwrap();
        let mut events = drain_events(c);
        assert!(!has_queue_empty(&events), "held while nothing is published");
        let result = if fail_prekeys {
            Err(ProtocolError::new(ErrorCode::Internal, "disk full"))
        } else {
            Ok(Response::Ok)
        };
        c.handle_input(r, &answer(after[prekeys].id, result), T0)
            .unwrap();
        events.extend(drain_events(c));
        assert!(
            !has_queue_empty(&events),
            "held while the certificate is pending"
        );
        c.handle_input(r, &answer(after[certificate].id, Ok(Response::Ok)), T0)
            .unwrap();
        events.extend(drain_events(c));
        assert!(has_queue_empty(&events), "released once both are answered");
        let server_error = events
            .iter()
            .any(|e| matches!(e, ClientEvent::ServerError(_)));
        assert_eq!(
            server_error, fail_prekeys,
            "a refused publication is reported"
        );

        // Later drains (nothing pending) pass straight through.
        c.handle_input(r, &frame(&ServerFrame::Push(Push::QueueEmpty)), T0)
            .unwrap();
        assert!(has_queue_empty(&drain_events(c)));
    }
}

/// A message given to `send` and not yet accepted by the server survives a
/// crash: the next client on the store sends it, once. One that was
/// accepted, or that failed (the app was told), is not sent again.
#[test]
fn messages_not_yet_accepted_survive_a_crash() {
    let World {
        mut server,
        mut alice1,
        mut bob,
        ..
    } = world();
    alice1.disconnect(&mut server);
    let id = alice1
        .client
        .send_text(&mut alice1.rng, &user("bob"), "while offline", T0)
        .unwrap();
    assert!(alice1.client.has_pending_sends());
    alice1.crash_and_restart(&mut server);
    assert!(
        alice1.client.has_pending_sends(),
        "reloaded from the outbox"
    );
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["while offline"]);
    assert!(has(&alice1, |e| matches!(
        e,
        ClientEvent::Sent { message, .. } if *message == id
    )));
    assert!(!alice1.client.has_pending_sends());

    let failed = alice1
        .client
        .send_text(&mut alice1.rng, &user("nobody"), "no such user", T0)
        .unwrap();
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert!(has(&alice1, |e| matches!(
        e,
        ClientEvent::DeliveryFailed { message, .. } if *message == failed
    )));

    bob.confirm_all();
    alice1.crash_and_restart(&mut server);
    assert!(!alice1.client.has_pending_sends(), "the outbox is empty");
    pump(&mut server, &mut [&mut alice1, &mut bob]);
    assert_eq!(bob.texts(), vec!["while offline"], "no second copy");
    assert!(!has(&alice1, |e| matches!(
        e,
        ClientEvent::Sent { .. } | ClientEvent::DeliveryFailed { .. }
    )));
}
