//! Full SDK devices: registered, logged in and driven by
//! `hush_server::net`, as an app written with tokio runs them.

use std::time::Duration;

use anyhow::Context;
use hush::SessionManager;
use hush::client::{Client, ClientConfig, ClientEvent};
use hush::keys::{DeviceAuthKeyPair, IdentityKeyPair, UserId};
use hush::store::{MemoryStore, StorageKey};
use hush::wire::content::Body;
use hush_server::net::{self, Connection, Driven, fresh_rng, unix_now};

use crate::server::{NAME, Server};

/// How long a setup step may take.
const WAIT: Duration = Duration::from_secs(60);

/// One device of its own account, connected.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) user: UserId,
    pub(crate) driven: Driven<MemoryStore>,
}

impl Device {
    /// Registers an account named `name` and logs its first device in; returns
    /// once its one-time prekeys are published.
    pub(crate) async fn create(
        address: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
        name: String,
    ) -> anyhow::Result<Self> {
        let mut rng = fresh_rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let auth = DeviceAuthKeyPair::generate(&mut rng);
        let user = UserId::new(name)?;
        let device = net::register_account(
            address,
            NAME,
            tls.clone(),
            &identity,
            &auth,
            user.clone(),
            WAIT,
        )
        .await
        .with_context(|| format!("registering {}", user.as_str()))?;
        let manager = SessionManager::create(
            MemoryStore::new(),
            &StorageKey::generate(&mut rng),
            identity,
            auth,
            user.clone(),
            device,
            Default::default(),
            &mut rng,
            unix_now(),
        )?;
        let client = Client::new(manager, NAME, ClientConfig::default())?;
        let connection = Connection::open(address, NAME, tls, client).await?;
        let mut device = Self {
            user,
            driven: connection.spawn(),
        };
        device
            .wait_for(|e| matches!(e, ClientEvent::PreKeysReplenished { .. }))
            .await
            .context("publishing the first prekeys")?;
        Ok(device)
    }

    /// Creates `count` devices named `{prefix}{i}`.
    pub(crate) async fn create_many(
        server: &Server,
        prefix: &str,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let (address, tls, prefix) = (
            server.address.clone(),
            server.tls.clone(),
            prefix.to_owned(),
        );
        crate::run_indexed(count, concurrency, move |i| {
            let (address, tls, name) = (address.clone(), tls.clone(), format!("{prefix}{i}"));
            async move { Self::create(&address, tls, name).await }
        })
        .await
    }

    /// Waits for an event `wanted` accepts, dropping the others.
    pub(crate) async fn wait_for(
        &mut self,
        wanted: impl Fn(&ClientEvent) -> bool,
    ) -> anyhow::Result<ClientEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.driven.next_event(left).await {
                Some(e) if wanted(&e) => return Ok(e),
                Some(ClientEvent::ServerError(e)) => anyhow::bail!("server error: {e:?}"),
                Some(_) => {}
                None => anyhow::bail!("{}: no such event within {WAIT:?}", self.user.as_str()),
            }
        }
    }

    /// Sends `text` to `to`.
    pub(crate) async fn send(
        &self,
        to: &UserId,
        text: String,
    ) -> anyhow::Result<hush::wire::content::MessageId> {
        let to = to.clone();
        Ok(self
            .driven
            .call(move |client, rng| client.send_text(rng, &to, &text, unix_now()))
            .await??)
    }

    /// Waits for a message and confirms it; returns its text.
    pub(crate) async fn receive(&mut self) -> anyhow::Result<String> {
        let ClientEvent::Message {
            envelope_id,
            content,
            ..
        } = self
            .wait_for(|e| matches!(e, ClientEvent::Message { .. }))
            .await?
        else {
            anyhow::bail!("not a message");
        };
        self.confirm(envelope_id).await?;
        Ok(match content.body {
            Body::Text(t) => t,
            other => format!("{other:?}"),
        })
    }

    /// Confirms a message: the client acknowledges it to the server.
    pub(crate) async fn confirm(
        &self,
        envelope_id: hush::wire::protocol::EnvelopeId,
    ) -> anyhow::Result<()> {
        self.driven
            .call(move |client, _| client.confirm(&envelope_id))
            .await??;
        Ok(())
    }

    /// One message each way, so that both sides hold an answered session
    /// and later messages are in the normal (not the initial) form.
    pub(crate) async fn introduce(a: &mut Self, b: &mut Self) -> anyhow::Result<()> {
        a.send(&b.user, "hello".into()).await?;
        b.receive().await?;
        b.send(&a.user, "hello".into()).await?;
        a.receive().await?;
        Ok(())
    }
}
