//! The reference server over real TLS on loopback, on both backends: SDK
//! clients converse through it, and a raw protocol client tries what a
//! malicious or broken client would.
//!
//! Every scenario runs twice, as `sqlite::name` and `mysql::name`. The MySQL
//! ones need `HUSH_TEST_MYSQL_URL` (e.g. `mysql://root@127.0.0.1:3306/test`);
//! without it they are skipped, except under `CI=true`, where they fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, NAME, Raw, TestServer, sorted};
use hush::client::ClientEvent;
use hush::keys::{
    DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, PqPreKeyKind, UserId,
};
use hush::wire::protocol::{
    BlobId, BlobKind, CHUNK_LEN, EnvelopeId, ErrorCode, LinkToken, Request, Response, UploadId,
    sign_auth, sign_registration,
};
use hush_server::metrics::Rejection;
use hush_server::net::fresh_rng;
use hush_server::storage::Storage;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Mysql).await
                }
            )*
        }
    };
}

on_both_backends!(
    two_users_with_two_devices_converse,
    bundles_carry_pq_prekeys_and_sessions_use_them,
    an_exhausted_device_hands_out_its_pq_last_resort,
    an_offline_device_gets_its_queue_in_order_then_the_marker,
    unauthenticated_and_foreign_requests_are_refused,
    login_needs_a_fresh_nonce_and_this_server_name,
    devices_need_valid_certificates_and_single_use_links,
    a_removed_device_can_no_longer_log_in,
    an_oversized_length_prefix_closes_the_connection,
    unauthenticated_connections_are_capped_per_address,
    uploads_are_capped_and_partial_ones_removed,
    a_users_attachment_bytes_are_capped,
    sends_and_bundle_fetches_are_rate_limited,
    the_push_hook_fires_only_for_offline_devices,
    backup_and_restore,
);

async fn server(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, |_| {}).await
}

/// Registers an account on a raw connection and logs in on another.
async fn raw_account(
    server: &TestServer,
    name: &str,
) -> (Raw, IdentityKeyPair, DeviceAuthKeyPair, DeviceAddress) {
    let mut rng = fresh_rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let auth = DeviceAuthKeyPair::generate(&mut rng);
    let user = UserId::new(name).unwrap();
    let mut raw = server.raw().await;
    let signature = sign_registration(&identity, &user, &auth.public_key(), NAME);
    let device = match raw
        .request(Request::RegisterAccount {
            user: user.clone(),
            identity: identity.public_key(),
            auth_key: auth.public_key(),
            signature,
        })
        .await
    {
        Ok(Response::Registered { device }) => device,
        other => panic!("registration: {other:?}"),
    };
    let address = DeviceAddress::new(user, device);
    let raw = login(server, &auth, &address).await;
    (raw, identity, auth, address)
}

/// Links a second device to the account logged in on `first`, over raw requests.
async fn raw_linked_device(server: &TestServer, first: &mut Raw) -> Raw {
    let Ok(Response::LinkPermission { token, .. }) =
        first.request(Request::RequestLinkPermission).await
    else {
        panic!("no permission")
    };
    let Some(address) = first.address.clone() else {
        panic!("not logged in")
    };
    let auth = DeviceAuthKeyPair::generate(&mut fresh_rng());
    let mut raw = server.raw().await;
    let Ok(Response::Registered { device }) = raw
        .request(Request::RegisterLinkedDevice {
            user: address.user.clone(),
            auth_key: auth.public_key(),
            permission: token,
        })
        .await
    else {
        panic!("not registered")
    };
    login(server, &auth, &DeviceAddress::new(address.user, device)).await
}

async fn login(server: &TestServer, auth: &DeviceAuthKeyPair, address: &DeviceAddress) -> Raw {
    let mut raw = server.raw().await;
    let nonce = raw.nonce.unwrap();
    let answer = raw
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(auth, &nonce, NAME),
        })
        .await;
    assert!(
        matches!(answer, Ok(Response::Authenticated { .. })),
        "{answer:?}"
    );
    raw.address = Some(address.clone());
    raw
}

fn code(r: &Result<Response, hush::wire::protocol::ProtocolError>) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code)
}

async fn two_users_with_two_devices_converse(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let mut alice1 = server.register("alice").await;
    let mut bob1 = server.register("bob").await;
    let mut alice2 = server.link(&mut alice1).await;

    alice1.send_and_wait("bob", "hello bob").await;
    assert_eq!(bob1.receive_text().await, "hello bob");
    assert_eq!(alice2.receive_text().await, "sync:hello bob");

    // Bob links a second device mid-conversation: Alice's next send is
    // answered with the missing device, and her client corrects and retries.
    let mut bob2 = server.link(&mut bob1).await;
    alice2
        .send_and_wait("bob", "from alice's second device")
        .await;
    assert_eq!(bob1.receive_text().await, "from alice's second device");
    assert_eq!(bob2.receive_text().await, "from alice's second device");
    assert_eq!(
        alice1.receive_text().await,
        "sync:from alice's second device"
    );

    bob2.send_and_wait("alice", "hi both").await;
    assert_eq!(alice1.receive_text().await, "hi both");
    assert_eq!(alice2.receive_text().await, "hi both");
    assert_eq!(bob1.receive_text().await, "sync:hi both");
    // 2 + 3 + 3 envelopes; the send answered with the missing device queued nothing.
    assert_eq!(
        server
            .metrics()
            .messages_relayed
            .load(std::sync::atomic::Ordering::Relaxed),
        8
    );
    server.finish().await;
}

/// The stack runs PQXDH: a client publishes PQ prekeys, a bundle fetched over
/// the server carries a PQ one-time prekey signed for the device, and a
/// client's first message takes the next one (a client refuses bundles
/// without a PQ prekey).
async fn bundles_carry_pq_prekeys_and_sessions_use_them(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let mut bob = server.register("bob").await;
    let storage = server.storage().await;
    let address = bob.address();
    assert_eq!(
        storage.pq_one_time_prekey_count(&address).await.unwrap(),
        50
    );
    let (mut kim, ..) = raw_account(&server, "kim").await;
    let answer = kim
        .request(Request::FetchBundles {
            user: address.user.clone(),
            devices: Vec::new(),
        })
        .await;
    let Ok(Response::Bundles(bundles)) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(bundles.len(), 1);
    let pq = bundles[0].pq_prekey.clone().expect("a PQ prekey");
    assert_eq!(pq.kind(), PqPreKeyKind::OneTime);
    pq.verify(&bundles[0].identity, &address).unwrap();
    assert_eq!(
        storage.pq_one_time_prekey_count(&address).await.unwrap(),
        49
    );
    // Kim cannot publish Bob's PQ prekey as hers.
    let answer = kim
        .request(Request::PublishPreKeys {
            signed: None,
            last_resort: None,
            one_time: Vec::new(),
            pq_last_resort: None,
            pq_one_time: vec![pq],
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::BadRequest));

    let mut alice = server.register("alice").await;
    alice.send_and_wait("bob", "post-quantum hello").await;
    assert_eq!(bob.receive_text().await, "post-quantum hello");
    assert_eq!(
        storage.pq_one_time_prekey_count(&address).await.unwrap(),
        48
    );
    server.finish().await;
}

/// Each fetch takes one of a device's 50 PQ one-time prekeys; once they are
/// gone (the device is offline, so it cannot top them up) the bundle carries
/// its PQ last-resort prekey, again and again.
async fn an_exhausted_device_hands_out_its_pq_last_resort(backend: Backend) {
    let Some(server) = TestServer::start(backend, |c| {
        c.limits.prekey_fetches_burst = 100.0;
    })
    .await
    else {
        return;
    };
    let mut bob = server.register("bob").await;
    let address = bob.address();
    bob.disconnect().await;
    let (mut kim, ..) = raw_account(&server, "kim").await;
    let mut one_time_ids = BTreeSet::new();
    let mut last_resort = Vec::new();
    for _ in 0..52 {
        let answer = kim
            .request(Request::FetchBundles {
                user: address.user.clone(),
                devices: Vec::new(),
            })
            .await;
        let Ok(Response::Bundles(mut bundles)) = answer else {
            panic!("{answer:?}")
        };
        let bundle = bundles.pop().unwrap();
        let pq = bundle.pq_prekey.clone().expect("a PQ prekey");
        pq.verify(&bundle.identity, &address).unwrap();
        match pq.kind() {
            PqPreKeyKind::OneTime => assert!(one_time_ids.insert(pq.id())),
            PqPreKeyKind::LastResort => last_resort.push(pq),
        }
    }
    assert_eq!(one_time_ids.len(), 50);
    assert_eq!(last_resort.len(), 2);
    assert_eq!(last_resort[0], last_resort[1]);
    server.finish().await;
}

async fn an_offline_device_gets_its_queue_in_order_then_the_marker(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    alice.send_and_wait("bob", "first").await;
    assert_eq!(bob.receive_text().await, "first");
    bob.disconnect().await;
    let texts: Vec<String> = (0..8).map(|i| format!("queued {i}")).collect();
    for t in &texts {
        alice.send_and_wait("bob", t).await;
    }
    // Reconnecting waits for the queue-empty marker; every message came before it, in order.
    bob.events.clear();
    bob.connect(&server).await;
    let got: Vec<String> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { content, .. } => Some(common::text_of(&content.body)),
            _ => None,
        })
        .collect();
    assert_eq!(got, texts);
    // Not confirmed, so not acknowledged: they come again after a reconnect.
    bob.disconnect().await;
    bob.events.clear();
    bob.connect(&server).await;
    assert_eq!(common::envelope_ids(&bob.events).len(), texts.len());
    assert_eq!(bob.receive_texts(8).await, texts);
    // Confirmed now: the queue is empty on the next login.
    bob.pump(Duration::from_millis(300)).await;
    bob.disconnect().await;
    bob.events.clear();
    bob.connect(&server).await;
    assert!(
        common::envelope_ids(&bob.events).is_empty(),
        "{:?}",
        bob.events
    );
    server.finish().await;
}

async fn unauthenticated_and_foreign_requests_are_refused(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let mut anonymous = server.raw().await;
    for request in [
        Request::ListDevices {
            user: UserId::new("x").unwrap(),
        },
        Request::Ack {
            envelopes: vec![EnvelopeId([1; 16])],
        },
        Request::RequestLinkPermission,
        Request::Download {
            blob: BlobId([1; 16]),
            offset: 0,
        },
    ] {
        let answer = anonymous.request(request).await;
        assert_eq!(
            code(&answer),
            Some(ErrorCode::Unauthenticated),
            "{answer:?}"
        );
    }

    // An envelope waits for Bob's device; Carol can neither ack it nor
    // touch Dave's upload.
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    let bob_address = bob.address();
    bob.disconnect().await;
    alice.send_and_wait("bob", "for bob only").await;
    let storage = server.storage().await;
    let queued = storage.queued(&bob_address, 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    let (mut carol, ..) = raw_account(&server, "carol").await;
    let answer = carol
        .request(Request::Ack {
            envelopes: vec![queued[0].delivery.id],
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::Forbidden));
    assert_eq!(storage.queued(&bob_address, 0, 10).await.unwrap().len(), 1);

    let (mut dave, ..) = raw_account(&server, "dave").await;
    let Ok(Response::UploadStarted { upload }) = dave
        .request(Request::UploadBegin {
            kind: BlobKind::File,
            size: 10,
        })
        .await
    else {
        panic!("upload refused")
    };
    let answer = carol
        .request(Request::UploadChunk {
            upload,
            offset: 0,
            data: vec![0; 10],
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::Forbidden));
    let answer = carol.request(Request::UploadFinish { upload }).await;
    assert_eq!(code(&answer), Some(ErrorCode::Forbidden));
    // An upload id is not a blob id; an unfinished upload cannot be read.
    let answer = carol
        .request(Request::Download {
            blob: BlobId(upload.0),
            offset: 0,
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::NotFound));

    bob.connect(&server).await;
    assert_eq!(bob.receive_text().await, "for bob only");
    server.finish().await;
}

async fn login_needs_a_fresh_nonce_and_this_server_name(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let (_, _, auth, address) = raw_account(&server, "erin").await;

    // Signed for another server: refused, and the challenge is spent.
    let mut raw = server.raw().await;
    let nonce = raw.nonce.unwrap();
    let relayed = raw
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(&auth, &nonce, "evil.example.org"),
        })
        .await;
    assert_eq!(code(&relayed), Some(ErrorCode::Unauthenticated));
    let retry = raw
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(&auth, &nonce, NAME),
        })
        .await;
    assert_eq!(code(&retry), Some(ErrorCode::Expired));

    // The answer to one connection's nonce does not open another.
    let mut other = server.raw().await;
    let replayed = other
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(&auth, &nonce, NAME),
        })
        .await;
    assert_eq!(code(&replayed), Some(ErrorCode::Unauthenticated));

    // A device that does not exist.
    let mut ghost = server.raw().await;
    let nonce = ghost.nonce.unwrap();
    let answer = ghost
        .request(Request::Authenticate {
            device: DeviceAddress::new(address.user.clone(), DeviceId(9)),
            signature: sign_auth(&auth, &nonce, NAME),
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::Unauthenticated));
    login(&server, &auth, &address).await;
    server.finish().await;
}

async fn devices_need_valid_certificates_and_single_use_links(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let (mut frank, identity, _, address) = raw_account(&server, "frank").await;
    let Ok(Response::LinkPermission { token, .. }) =
        frank.request(Request::RequestLinkPermission).await
    else {
        panic!("no permission")
    };
    let mut rng = fresh_rng();
    let auth2 = DeviceAuthKeyPair::generate(&mut rng);
    let mut raw = server.raw().await;
    let register = Request::RegisterLinkedDevice {
        user: address.user.clone(),
        auth_key: auth2.public_key(),
        permission: token,
    };
    let Ok(Response::Registered { device: device2 }) = raw.request(register.clone()).await else {
        panic!("not registered")
    };
    assert_ne!(device2, address.device);
    // One registration per connection.
    assert_eq!(
        code(&raw.request(register.clone()).await),
        Some(ErrorCode::BadRequest)
    );
    // The permission was single use; an invented one never worked.
    let mut raw = server.raw().await;
    assert_eq!(code(&raw.request(register).await), Some(ErrorCode::Expired));
    let mut raw = server.raw().await;
    let invented = raw
        .request(Request::RegisterLinkedDevice {
            user: address.user.clone(),
            auth_key: auth2.public_key(),
            permission: LinkToken([7; 32]),
        })
        .await;
    assert_eq!(code(&invented), Some(ErrorCode::Expired));

    // The new device logs in, but a certificate from another identity, or
    // for another device, is refused, and it is not listed.
    let second = DeviceAddress::new(address.user.clone(), device2);
    let mut dev2 = login(&server, &auth2, &second).await;
    let stranger = IdentityKeyPair::generate(&mut rng);
    for certificate in [
        stranger.certify_device(&second.user, device2, &auth2.public_key(), 1),
        identity.certify_device(&second.user, address.device, &auth2.public_key(), 1),
        identity.certify_device(
            &second.user,
            device2,
            &DeviceAuthKeyPair::generate(&mut rng).public_key(),
            1,
        ),
    ] {
        let answer = dev2
            .request(Request::PublishCertificate { certificate })
            .await;
        assert_eq!(code(&answer), Some(ErrorCode::BadRequest));
    }
    let Ok(Response::Devices(listed)) = frank
        .request(Request::ListDevices {
            user: address.user.clone(),
        })
        .await
    else {
        panic!("no list")
    };
    assert!(listed.iter().all(|c| c.address().device != device2));
    let good = identity.certify_device(&second.user, device2, &auth2.public_key(), 1);
    assert_eq!(
        dev2.request(Request::PublishCertificate { certificate: good })
            .await,
        Ok(Response::Ok)
    );
    server.finish().await;
}

async fn a_removed_device_can_no_longer_log_in(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    let (mut first, identity, _, address) = raw_account(&server, "gina").await;
    let certificate = identity.certify_device(
        &address.user,
        address.device,
        &first_auth_key(&server, &address).await,
        1,
    );
    assert_eq!(
        first
            .request(Request::PublishCertificate { certificate })
            .await,
        Ok(Response::Ok)
    );
    let Ok(Response::LinkPermission { token, .. }) =
        first.request(Request::RequestLinkPermission).await
    else {
        panic!()
    };
    let auth2 = DeviceAuthKeyPair::generate(&mut fresh_rng());
    let mut raw = server.raw().await;
    let Ok(Response::Registered { device }) = raw
        .request(Request::RegisterLinkedDevice {
            user: address.user.clone(),
            auth_key: auth2.public_key(),
            permission: token,
        })
        .await
    else {
        panic!()
    };
    let second = DeviceAddress::new(address.user.clone(), device);
    let mut connected = login(&server, &auth2, &second).await;
    assert_eq!(
        first.request(Request::RemoveDevice { device }).await,
        Ok(Response::Ok)
    );
    assert!(
        connected.closed().await,
        "the removed device's connection is closed"
    );
    let mut again = server.raw().await;
    let nonce = again.nonce.unwrap();
    let answer = again
        .request(Request::Authenticate {
            device: second,
            signature: sign_auth(&auth2, &nonce, NAME),
        })
        .await;
    assert_eq!(code(&answer), Some(ErrorCode::Unauthenticated));
    server.finish().await;
}

async fn first_auth_key(server: &TestServer, address: &DeviceAddress) -> hush::keys::DeviceAuthKey {
    server
        .storage()
        .await
        .device(address)
        .await
        .unwrap()
        .unwrap()
        .auth_key
}

async fn an_oversized_length_prefix_closes_the_connection(backend: Backend) {
    let Some(server) = server(backend).await else {
        return;
    };
    // Before login the cap is the pre-auth one: 16 KiB.
    let mut raw = server.raw().await;
    raw.write(&(20_000u32).to_be_bytes()).await.unwrap();
    assert!(raw.closed().await);
    // After login, a prefix of 4 GiB - 1: refused before any allocation.
    let (mut logged_in, ..) = raw_account(&server, "hank").await;
    logged_in.write(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert!(logged_in.closed().await);
    assert_eq!(server.metrics().rejections(Rejection::FrameSize), 2);
    server.finish().await;
}

async fn unauthenticated_connections_are_capped_per_address(backend: Backend) {
    let Some(server) =
        TestServer::start(backend, |c| c.limits.preauth_connections_per_ip = 3).await
    else {
        return;
    };
    let (_, _, auth, address) = raw_account(&server, "ivan").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.raw().await);
    }
    // The fourth is dropped before TLS.
    let refused = hush_server::net::connect(&server.address, NAME, server.tls()).await;
    assert!(
        refused.is_err(),
        "a fourth unauthenticated connection was accepted"
    );
    assert_eq!(server.metrics().rejections(Rejection::PreAuthPerIp), 1);
    // A connection that logs in no longer counts: there is room for one more.
    let nonce = open[0].nonce.unwrap();
    let answer = open[0]
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(&auth, &nonce, NAME),
        })
        .await;
    assert!(matches!(answer, Ok(Response::Authenticated { .. })));
    open.push(server.raw().await);
    assert!(
        hush_server::net::connect(&server.address, NAME, server.tls())
            .await
            .is_err()
    );
    assert_eq!(server.metrics().rejections(Rejection::PreAuthPerIp), 2);
    // Logged-in devices are not capped per address: with the pre-auth
    // connections closed, many log in from this one address.
    open.truncate(1);
    let mut logged_in = Vec::new();
    for _ in 0..6 {
        logged_in.push(login_retrying(&server, &auth, &address).await);
    }
    assert_eq!(logged_in.len(), 6);
    server.finish().await;
}

/// Logs in once the server has noticed closed pre-auth connections.
async fn login_retrying(
    server: &TestServer,
    auth: &DeviceAuthKeyPair,
    address: &DeviceAddress,
) -> Raw {
    for _ in 0..100 {
        if let Ok(stream) = hush_server::net::connect(&server.address, NAME, server.tls()).await {
            drop(stream);
            return login(server, auth, address).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no room for a login");
}

async fn uploads_are_capped_and_partial_ones_removed(backend: Backend) {
    let Some(server) = TestServer::start(backend, |c| c.limits.uploads_per_user = 2).await else {
        return;
    };
    let (mut jill, _, auth, address) = raw_account(&server, "jill").await;
    let too_big = jill
        .request(Request::UploadBegin {
            kind: BlobKind::Image,
            size: BlobKind::Image.max_ciphertext_len() + 1,
        })
        .await;
    assert_eq!(code(&too_big), Some(ErrorCode::TooLarge));
    let mut uploads = Vec::new();
    for _ in 0..2 {
        match jill
            .request(Request::UploadBegin {
                kind: BlobKind::File,
                size: 100_000,
            })
            .await
        {
            Ok(Response::UploadStarted { upload }) => uploads.push(upload),
            other => panic!("{other:?}"),
        }
    }
    // A third one of the same user, even from another of its devices, waits its turn.
    let _ = (auth, address);
    let mut jill2 = raw_linked_device(&server, &mut jill).await;
    let third = jill2
        .request(Request::UploadBegin {
            kind: BlobKind::File,
            size: 10,
        })
        .await;
    assert_eq!(code(&third), Some(ErrorCode::LimitReached), "{third:?}");

    // Chunks must come in order and not overrun; a complete upload reads back.
    let upload = uploads[0];
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let skip = jill
        .request(Request::UploadChunk {
            upload,
            offset: 5,
            data: vec![0; 5],
        })
        .await;
    assert_eq!(code(&skip), Some(ErrorCode::BadRequest));
    let early = jill.request(Request::UploadFinish { upload }).await;
    assert_eq!(code(&early), Some(ErrorCode::BadRequest));
    for (i, chunk) in data.chunks(CHUNK_LEN).enumerate() {
        let answer = jill
            .request(Request::UploadChunk {
                upload,
                offset: (i * CHUNK_LEN) as u64,
                data: chunk.to_vec(),
            })
            .await;
        assert_eq!(answer, Ok(Response::Ok));
    }
    let Ok(Response::Uploaded { blob }) = jill.request(Request::UploadFinish { upload }).await
    else {
        panic!("not uploaded")
    };
    let mut back = Vec::new();
    while back.len() < data.len() {
        match jill2
            .request(Request::Download {
                blob,
                offset: back.len() as u64,
            })
            .await
        {
            Ok(Response::DownloadChunk { total, data: d, .. }) => {
                assert_eq!(total, data.len() as u64);
                back.extend_from_slice(&d);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, data);
    // The finished one freed a slot.
    assert!(matches!(
        jill2
            .request(Request::UploadBegin {
                kind: BlobKind::File,
                size: 10
            })
            .await,
        Ok(Response::UploadStarted { .. })
    ));
    // Closing a connection drops its partial uploads.
    let partial = server.config.blob_dir().join("partial");
    assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 2);
    drop(jill);
    drop(jill2);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = std::fs::read_dir(&partial).unwrap().count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0);
    let _: UploadId = uploads[1];
    server.finish().await;
}

/// The quota counts finished blobs and uploads in progress (by declared
/// size) of every device of the user, and no other user's.
async fn a_users_attachment_bytes_are_capped(backend: Backend) {
    let Some(server) = TestServer::start(backend, |c| c.limits.blob_bytes_per_user = 250_000).await
    else {
        return;
    };
    let (mut jill, ..) = raw_account(&server, "jill").await;
    let (mut jack, ..) = raw_account(&server, "jack").await;
    async fn begin(raw: &mut Raw, size: u64) -> Result<UploadId, Option<ErrorCode>> {
        let answer = raw
            .request(Request::UploadBegin {
                kind: BlobKind::File,
                size,
            })
            .await;
        match answer {
            Ok(Response::UploadStarted { upload }) => Ok(upload),
            other => Err(code(&other)),
        }
    }
    let first = begin(&mut jill, 100_000).await.unwrap();
    begin(&mut jill, 100_000).await.unwrap();
    assert_eq!(
        begin(&mut jill, 60_000).await,
        Err(Some(ErrorCode::LimitReached)),
        "200,000 in progress"
    );
    let mut jill2 = raw_linked_device(&server, &mut jill).await;
    assert_eq!(
        begin(&mut jill2, 60_000).await,
        Err(Some(ErrorCode::LimitReached)),
        "the same user on another device"
    );
    begin(&mut jack, 200_000)
        .await
        .expect("another user's quota");

    // Finished, the first counts as stored: still 200,000 in all.
    let data = vec![7u8; 100_000];
    for (i, chunk) in data.chunks(CHUNK_LEN).enumerate() {
        let answer = jill
            .request(Request::UploadChunk {
                upload: first,
                offset: (i * CHUNK_LEN) as u64,
                data: chunk.to_vec(),
            })
            .await;
        assert_eq!(answer, Ok(Response::Ok));
    }
    assert!(matches!(
        jill.request(Request::UploadFinish { upload: first }).await,
        Ok(Response::Uploaded { .. })
    ));
    assert_eq!(
        begin(&mut jill2, 60_000).await,
        Err(Some(ErrorCode::LimitReached))
    );
    begin(&mut jill2, 50_000).await.expect("exactly the quota");
    assert_eq!(
        begin(&mut jill2, 1).await,
        Err(Some(ErrorCode::LimitReached))
    );
    server.finish().await;
}

async fn sends_and_bundle_fetches_are_rate_limited(backend: Backend) {
    let Some(server) = TestServer::start(backend, |c| {
        c.limits.sends_burst = 3.0;
        c.limits.sends_per_sec = 0.01;
        c.limits.prekey_fetches_burst = 2.0;
        c.limits.prekey_fetches_per_sec = 0.01;
    })
    .await
    else {
        return;
    };
    let (mut kim, ..) = raw_account(&server, "kim").await;
    let nobody = UserId::new("nobody").unwrap();
    for _ in 0..3 {
        let answer = kim
            .request(Request::Send {
                recipient: nobody.clone(),
                envelopes: Vec::new(),
            })
            .await;
        assert_eq!(code(&answer), Some(ErrorCode::NotFound));
    }
    let limited = kim
        .request(Request::Send {
            recipient: nobody.clone(),
            envelopes: Vec::new(),
        })
        .await;
    assert_eq!(code(&limited), Some(ErrorCode::RateLimited));
    for expected in [
        ErrorCode::NotFound,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
    ] {
        let answer = kim
            .request(Request::FetchBundles {
                user: nobody.clone(),
                devices: Vec::new(),
            })
            .await;
        assert_eq!(code(&answer), Some(expected));
    }
    assert_eq!(server.metrics().rejections(Rejection::SendRate), 1);
    assert_eq!(server.metrics().rejections(Rejection::FetchRate), 1);
    server.finish().await;
}

async fn the_push_hook_fires_only_for_offline_devices(backend: Backend) {
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", receiver.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = receiver.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("}") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            });
        }
    });
    let Some(server) = TestServer::start(backend, |c| c.push_webhook = url).await else {
        return;
    };
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    bob.call(|client, _| client.register_push_token("bob-token"))
        .await
        .unwrap();
    bob.pump(Duration::from_millis(300)).await;

    // Connected: no push.
    alice.send_and_wait("bob", "live").await;
    assert_eq!(bob.receive_text().await, "live");
    // Offline: one POST naming the device and its token, and nothing of the message.
    bob.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_and_wait("bob", "while away").await;
    let posted = tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(posted.starts_with("POST /push "), "{posted}");
    assert!(posted.contains("\"user\":\"bob\""), "{posted}");
    assert!(posted.contains("\"token\":\"bob-token\""), "{posted}");
    assert!(!posted.contains("while away"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "one message, one push");
    assert_eq!(
        server
            .metrics()
            .push_hook_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    bob.connect(&server).await;
    assert_eq!(bob.receive_text().await, "while away");
    let _ = sorted(Vec::new());
    server.finish().await;
}

/// Takes a backup as docs/server.md says (database first, then blobs),
/// writes more after it, restores into a new server, and checks what the
/// restored server has: everything up to the backup.
async fn backup_and_restore(backend: Backend) {
    let Some(mut server) = server(backend).await else {
        return;
    };
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    alice.send_and_wait("bob", "hello").await;
    assert_eq!(bob.receive_text().await, "hello");
    bob.disconnect().await;
    alice.send_and_wait("bob", "before the backup").await;
    let (mut carol, ..) = raw_account(&server, "carol").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let Ok(Response::UploadStarted { upload }) = carol
        .request(Request::UploadBegin {
            kind: BlobKind::File,
            size: data.len() as u64,
        })
        .await
    else {
        panic!("no upload")
    };
    for (i, chunk) in data.chunks(CHUNK_LEN).enumerate() {
        let offset = (i * CHUNK_LEN) as u64;
        let answer = carol
            .request(Request::UploadChunk {
                upload,
                offset,
                data: chunk.to_vec(),
            })
            .await;
        assert_eq!(answer, Ok(Response::Ok));
    }
    let Ok(Response::Uploaded { blob }) = carol.request(Request::UploadFinish { upload }).await
    else {
        panic!("not uploaded")
    };

    // The backup, while the server runs.
    let backup = tempfile::tempdir().unwrap();
    let dump = backup.path().join("hush.backup");
    match backend {
        Backend::Sqlite => {
            let db = rusqlite::Connection::open(server.config.sqlite_path()).unwrap();
            db.execute("VACUUM INTO ?1", [dump.to_str().unwrap()])
                .unwrap();
        }
        Backend::Mysql => {
            let (user, host, port, database) = mysql_parts(&server.config.database_url);
            let out = std::process::Command::new("mysqldump")
                .args([
                    "--single-transaction",
                    "--routines",
                    "-h",
                    &host,
                    "-P",
                    &port,
                    "-u",
                    &user,
                    &database,
                ])
                .output()
                .expect("mysqldump (the MariaDB or MySQL client) is installed");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&dump, out.stdout).unwrap();
        }
    }
    let blobs = server.config.blob_dir().join("blobs");
    let saved_blobs = backup.path().join("blobs");
    copy_dir(&blobs, &saved_blobs);
    alice.send_and_wait("bob", "after the backup").await;
    server.stop().await;

    // The restore: a new server on the copy.
    let mut restored = TestServer::prepare(backend, |_| {}).await.unwrap();
    match backend {
        Backend::Sqlite => {
            std::fs::copy(&dump, restored.config.sqlite_path()).unwrap();
        }
        Backend::Mysql => {
            let (user, host, port, database) = mysql_parts(&restored.config.database_url);
            let status = std::process::Command::new("mysql")
                .args(["-h", &host, "-P", &port, "-u", &user, &database])
                .stdin(std::fs::File::open(&dump).unwrap())
                .status()
                .expect("mysql (the client) is installed");
            assert!(status.success());
        }
    }
    copy_dir(&saved_blobs, &restored.config.blob_dir().join("blobs"));
    restored.run().await;
    bob.connect(&restored).await;
    let texts: Vec<String> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            hush::client::ClientEvent::Message { content, .. } => {
                Some(common::text_of(&content.body))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        ["before the backup"],
        "what was accepted after the backup is gone"
    );
    let (mut dave, ..) = raw_account(&restored, "dave").await;
    let mut back = Vec::new();
    while back.len() < data.len() {
        match dave
            .request(Request::Download {
                blob,
                offset: back.len() as u64,
            })
            .await
        {
            Ok(Response::DownloadChunk { data: d, .. }) => back.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, data);
    server.finish().await;
    restored.finish().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// (user, host, port, database) of a `mysql://user@host:port/database` URL.
fn mysql_parts(url: &str) -> (String, String, String, String) {
    let rest = url.strip_prefix("mysql://").unwrap();
    let (auth, rest) = rest.split_once('@').unwrap();
    let (hostport, database) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    (
        auth.split(':').next().unwrap().to_owned(),
        host.to_owned(),
        port.to_owned(),
        database.to_owned(),
    )
}
