//! The `hush-server` binary is killed with SIGKILL while messages flow and
//! started again on the same data: every envelope whose sender was told it
//! was accepted is delivered. Runs on both backends (MySQL as in
//! `tests/server.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Backend, TestServer};
use hush::client::ClientEvent;
use hush::keys::UserId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_accepted_envelopes_survive_sigkill() {
    accepted_envelopes_survive_sigkill(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_accepted_envelopes_survive_sigkill() {
    accepted_envelopes_survive_sigkill(Backend::Mysql).await;
}

async fn accepted_envelopes_survive_sigkill(backend: Backend) {
    let Some(mut server) = TestServer::spawn_process(backend).await else {
        return;
    };
    let mut alice = server.register("alice").await;
    let mut bob = server.register("bob").await;
    bob.disconnect().await;
    let to = UserId::new("bob").unwrap();

    // Sixty messages go out at once; the server is killed after a third of
    // them were accepted, while the rest are in flight.
    let mut texts = BTreeMap::new();
    for i in 0..60 {
        let text = format!("message {i}");
        let id = alice.send_text("bob", &text).await;
        texts.insert(id, text);
    }
    let mut accepted = Vec::new();
    while accepted.len() < 20 {
        let event = alice
            .wait(|e| matches!(e, ClientEvent::Sent { recipient, .. } if *recipient == to))
            .await;
        if let ClientEvent::Sent { message, .. } = event {
            accepted.push(texts[&message].clone());
        }
    }
    server.kill();
    // Whatever else the client saw before the connection died.
    alice.drain_until_closed(Duration::from_millis(500)).await;
    for event in std::mem::take(&mut alice.events) {
        if let ClientEvent::Sent { message, recipient } = event
            && recipient == to
        {
            accepted.push(texts[&message].clone());
        }
    }

    server.respawn().await;
    bob.connect(&server).await;
    let delivered: Vec<String> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { content, .. } => Some(common::text_of(&content.body)),
            _ => None,
        })
        .collect();
    for text in &accepted {
        assert!(delivered.contains(text), "{text} was accepted but lost");
    }
    assert!(accepted.len() >= 20);
    server.finish().await;
}
