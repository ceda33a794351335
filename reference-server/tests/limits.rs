//! Limits and operations of the reference server that do not depend on the
//! storage backend (they run on SQLite): the global connection cap, the
//! handshake, auth and idle timeouts, slow readers, the incoming-byte budget,
//! the admin listener and graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Backend, NAME, Raw, TestServer};
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::session::SessionMessage;
use hush::wire::envelope::Envelope;
use hush::wire::frame::encode_frame;
use hush::wire::protocol::{ClientFrame, Request, Response, sign_auth, sign_registration};
use hush_server::metrics::Rejection;
use hush_server::net::fresh_rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(tweak: impl FnOnce(&mut hush_server::Config)) -> TestServer {
    TestServer::start(Backend::Sqlite, tweak)
        .await
        .expect("SQLite always runs")
}

/// Registers an account, logs in, and publishes a certificate (so others
/// may send to it).
async fn account(server: &TestServer, name: &str) -> (Raw, DeviceAddress) {
    let (raw, address, _) = account_with_key(server, name).await;
    (raw, address)
}

async fn login(server: &TestServer, address: &DeviceAddress, auth: &DeviceAuthKeyPair) -> Raw {
    let mut raw = server.raw().await;
    let nonce = raw.nonce.unwrap();
    let answer = raw
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(auth, &nonce, NAME),
        })
        .await;
    assert!(matches!(answer, Ok(Response::Authenticated { .. })));
    raw
}

async fn account_with_key(
    server: &TestServer,
    name: &str,
) -> (Raw, DeviceAddress, DeviceAuthKeyPair) {
    let mut rng = fresh_rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let auth = DeviceAuthKeyPair::generate(&mut rng);
    let user = UserId::new(name).unwrap();
    let mut raw = server.raw().await;
    let Ok(Response::Registered { device }) = raw
        .request(Request::RegisterAccount {
            user: user.clone(),
            identity: identity.public_key(),
            auth_key: auth.public_key(),
            signature: sign_registration(&identity, &user, &auth.public_key(), NAME),
        })
        .await
    else {
        panic!("not registered")
    };
    let address = DeviceAddress::new(user.clone(), device);
    let mut raw = server.raw().await;
    let nonce = raw.nonce.unwrap();
    let answer = raw
        .request(Request::Authenticate {
            device: address.clone(),
            signature: sign_auth(&auth, &nonce, NAME),
        })
        .await;
    assert!(matches!(answer, Ok(Response::Authenticated { .. })));
    let certificate = identity.certify_device(&user, device, &auth.public_key(), 1);
    assert_eq!(
        raw.request(Request::PublishCertificate { certificate })
            .await,
        Ok(Response::Ok)
    );
    (raw, address, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_holds() {
    let server = start(|c| c.limits.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.raw().await);
    }
    let refused = hush_server::net::connect(&server.address, NAME, server.tls()).await;
    assert!(refused.is_err());
    assert_eq!(server.metrics().rejections(Rejection::Connections), 1);
    drop(open.pop());
    let mut accepted = None;
    for _ in 0..100 {
        if let Ok(s) = hush_server::net::connect(&server.address, NAME, server.tls()).await {
            accepted = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted.is_some(), "a closed connection frees its slot");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_auth_and_idle_timeouts_close_connections() {
    let server = start(|c| {
        c.limits.tls_handshake_timeout = 1;
        c.limits.auth_timeout = 1;
        c.limits.idle_timeout = 2;
    })
    .await;
    // No TLS at all: closed after the handshake timeout.
    let mut tcp = tokio::net::TcpStream::connect(&server.address)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(server.metrics().rejections(Rejection::HandshakeTimeout), 1);

    // TLS but no login: closed after the auth timeout.
    let mut anonymous = server.raw().await;
    assert!(anonymous.closed().await);
    assert_eq!(server.metrics().rejections(Rejection::AuthTimeout), 1);

    // Logged in: pings keep the connection, silence closes it.
    let (mut raw, _) = account(&server, "ann").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(raw.request(Request::Ping).await, Ok(Response::Pong));
    }
    assert!(raw.closed().await);
    assert_eq!(server.metrics().rejections(Rejection::IdleTimeout), 1);
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_disconnected_without_stalling_others() {
    let server = start(|c| c.limits.outbound_queue_frames = 4).await;
    let (mut slow, slow_address) = account(&server, "slow").await;
    let (mut fast, fast_address) = account(&server, "fast").await;
    let (mut sender, sender_address) = account(&server, "sender").await;
    // Large envelopes fill the socket buffers of a reader that never reads.
    let mut message = vec![SessionMessage::TAG_NORMAL];
    message.extend(std::iter::repeat_n(7u8, 200_000));
    let envelope = Envelope::new(sender_address.clone(), message).unwrap();
    let mut slow_closed = false;
    for _ in 0..200 {
        let answer = sender
            .request(Request::Send {
                recipient: slow_address.user.clone(),
                envelopes: vec![(slow_address.device, envelope.clone())],
            })
            .await;
        assert!(matches!(answer, Ok(Response::Sent { .. })), "{answer:?}");
        if server.metrics().rejections(Rejection::SlowReader) > 0 {
            slow_closed = true;
            break;
        }
    }
    assert!(slow_closed, "the slow reader was never disconnected");
    // Another device is served as usual meanwhile.
    let answer = sender
        .request(Request::Send {
            recipient: fast_address.user.clone(),
            envelopes: vec![(fast_address.device, envelope.clone())],
        })
        .await;
    assert!(matches!(answer, Ok(Response::Sent { .. })));
    assert_eq!(fast.request(Request::Ping).await, Ok(Response::Pong));
    assert!(
        fast.pushes
            .iter()
            .any(|p| matches!(p, hush::wire::protocol::Push::Deliver(_)))
    );
    assert!(slow.closed().await);
    // Nothing was lost: the envelopes wait in the queue.
    let storage = server.storage().await;
    use hush_server::storage::Storage;
    assert!(
        !storage
            .queued(&slow_address, 0, 1)
            .await
            .unwrap()
            .is_empty()
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pause_while_the_incoming_budget_is_spent() {
    let server = start(|c| {
        c.limits.max_frame_len = 200_000;
        c.limits.incoming_buffer_bytes = 400_000;
    })
    .await;
    // Three connections each send all but one byte of a large frame: beyond
    // each one's free 64 KiB, together more than the shared budget, so the
    // third one's reads wait, and large reads of others wait behind it.
    let (mut a, _) = account(&server, "a").await;
    let (mut b, _) = account(&server, "b").await;
    let (mut d, _) = account(&server, "d").await;
    let (mut c, c_address) = account(&server, "c").await;
    let (mut e, _) = account(&server, "e").await;
    let mut partial = (199_999u32).to_be_bytes().to_vec();
    partial.extend(std::iter::repeat_n(0u8, 199_998));
    for holder in [&mut a, &mut b, &mut d] {
        holder.write(&partial).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A large request (a send of a 100 KB envelope) is not read while the
    // budget is spent...
    let mut message = vec![SessionMessage::TAG_NORMAL];
    message.extend(std::iter::repeat_n(1u8, 100_000));
    let envelope = Envelope::new(c_address.clone(), message).unwrap();
    let send = ClientFrame {
        id: 77,
        request: Request::Send {
            recipient: UserId::new("nobody").unwrap(),
            envelopes: vec![(DeviceId(1), envelope)],
        },
    };
    c.write(&encode_frame(&send.to_payload(), 200_000).unwrap())
        .await
        .unwrap();
    let answer_77 = async |c: &mut Raw| loop {
        match c.next_frame().await {
            Some(hush::wire::protocol::ServerFrame::Response { id: 77, result }) => {
                return Some(result);
            }
            Some(_) => continue,
            None => return None,
        }
    };
    let early = tokio::time::timeout(Duration::from_millis(500), answer_77(&mut c)).await;
    assert!(
        early.is_err(),
        "answered although the budget was spent: {early:?}"
    );
    // ...while small requests still are (each connection's free allowance)...
    assert_eq!(e.request(Request::Ping).await, Ok(Response::Pong));
    // ...and it is answered once a holder goes away and frees its share.
    a.stream.shutdown().await.unwrap();
    drop(a);
    let answer = tokio::time::timeout(Duration::from_secs(10), answer_77(&mut c))
        .await
        .expect("answered after the budget was freed");
    assert!(matches!(answer, Some(Err(_))), "{answer:?}");
    drop((b, d));
    server.finish().await;
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_reports_health_and_metrics() {
    let server = start(|_| {}).await;
    let admin = server.running.as_ref().unwrap().admin_address.unwrap();
    let (_raw, _) = account(&server, "metered").await;
    let health = http_get(admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"));
    assert!(
        metrics.contains("hush_authenticated_connections 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hush_storage_seconds_count"));
    assert!(metrics.contains("hush_rejections_total{limit=\"preauth_per_ip\"} 0"));
    assert!(http_get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_and_stops_accepting() {
    let mut server = start(|_| {}).await;
    let (mut raw, _) = account(&server, "leaving").await;
    assert_eq!(raw.request(Request::Ping).await, Ok(Response::Pong));
    let running = server.running.take().unwrap();
    // The registration's connection is gone once the server has seen it close.
    for _ in 0..200 {
        if running.metrics.connections.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.metrics.connections.load(Ordering::Relaxed), 1);
    running.shutdown(Duration::from_secs(2)).await;
    assert!(raw.closed().await);
    assert!(
        hush_server::net::connect(&server.address, NAME, server.tls())
            .await
            .is_err()
    );
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_of_a_device_displaces_the_older_one() {
    let server = start(|_| {}).await;
    let mut rng = fresh_rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let auth = DeviceAuthKeyPair::generate(&mut rng);
    let user = UserId::new("twice").unwrap();
    let mut raw = server.raw().await;
    let Ok(Response::Registered { device }) = raw
        .request(Request::RegisterAccount {
            user: user.clone(),
            identity: identity.public_key(),
            auth_key: auth.public_key(),
            signature: sign_registration(&identity, &user, &auth.public_key(), NAME),
        })
        .await
    else {
        panic!("not registered")
    };
    let address = DeviceAddress::new(user, device);
    let login = async || {
        let mut raw = server.raw().await;
        let nonce = raw.nonce.unwrap();
        let answer = raw
            .request(Request::Authenticate {
                device: address.clone(),
                signature: sign_auth(&auth, &nonce, NAME),
            })
            .await;
        assert!(matches!(answer, Ok(Response::Authenticated { .. })));
        raw
    };
    let mut first = login().await;
    let mut second = login().await;
    assert!(first.closed().await, "the older connection is closed");
    assert_eq!(second.request(Request::Ping).await, Ok(Response::Pong));
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_delivered_while_the_device_keeps_talking() {
    let server = start(|c| {
        c.limits.idle_timeout = 1;
        c.limits.outbound_queue_bytes = 2 << 20;
    })
    .await;
    let (mut sender, sender_address) = account(&server, "sender").await;
    let (offline, address, auth) = account_with_key(&server, "offline").await;
    drop(offline);
    let mut message = vec![SessionMessage::TAG_NORMAL];
    message.extend(std::iter::repeat_n(3u8, 200_000));
    let envelope = Envelope::new(sender_address, message).unwrap();
    for _ in 0..40 {
        let answer = sender
            .request(Request::Send {
                recipient: address.user.clone(),
                envelopes: vec![(address.device, envelope.clone())],
            })
            .await;
        assert!(matches!(answer, Ok(Response::Sent { .. })), "{answer:?}");
    }
    // 8 MB of backlog through 2 MiB of outbound room, read slowly, with
    // pings (and acks) answered all along: more than the idle timeout in all.
    let mut raw = login(&server, &address, &auth).await;
    let mut acked = 0;
    for _ in 0..200 {
        assert_eq!(raw.request(Request::Ping).await, Ok(Response::Pong));
        // Read before acking: the marker comes after every delivery, so when
        // it is here, all of them are and get acked below. (Checked after the
        // ack, deliveries that arrived during it would be left unacked.)
        let drained = raw
            .pushes
            .iter()
            .any(|p| matches!(p, hush::wire::protocol::Push::QueueEmpty));
        let ids: Vec<_> = raw
            .pushes
            .iter()
            .filter_map(|p| match p {
                hush::wire::protocol::Push::Deliver(d) => Some(d.id),
                _ => None,
            })
            .skip(acked)
            .collect();
        if !ids.is_empty() {
            acked += ids.len();
            assert_eq!(
                raw.request(Request::Ack { envelopes: ids }).await,
                Ok(Response::Ok)
            );
        }
        if drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(acked, 40);
    assert!(
        raw.pushes
            .iter()
            .any(|p| matches!(p, hush::wire::protocol::Push::QueueEmpty))
    );
    // The device talked all along: it is still connected.
    assert_eq!(raw.request(Request::Ping).await, Ok(Response::Pong));
    server.finish().await;
}
