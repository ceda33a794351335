//! Alice and Bob exchange end-to-end encrypted messages, each device keeping
//! its state in an encrypted SQLite store, then compare safety numbers.
//!
//! `cargo run -p hush --example conversation`

use std::error::Error;

use hush::keys::{DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::store::{SqliteStore, StorageKey};
use hush::{PreKeyBundle, SessionManager};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

fn main() -> Result<(), Box<dyn Error>> {
    // A real app uses the operating system's RNG and keeps the storage key in
    // its keystore; a fixed seed keeps this demo reproducible.
    let mut rng = ChaCha20Rng::from_seed([42; 32]);
    let now = 1_700_000_000;
    let dir = std::env::temp_dir().join(format!("hush-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let create = |name: &str, rng: &mut ChaCha20Rng| -> Result<_, Box<dyn Error>> {
        let store = SqliteStore::open(dir.join(format!("{name}.db")))?;
        Ok(SessionManager::create(
            store,
            &StorageKey::generate(rng),
            IdentityKeyPair::generate(rng),
            DeviceAuthKeyPair::generate(rng),
            UserId::new(name)?,
            DeviceId(1),
            Default::default(),
            rng,
            now,
        )?)
    };
    let mut alice = create("alice", &mut rng)?;
    let mut bob = create("bob", &mut rng)?;

    // Bob uploads one-time prekeys; a server would hand one to Alice with his bundle.
    let one_time = bob.generate_one_time_prekeys(&mut rng, 10)?;
    let bundle = PreKeyBundle {
        one_time_prekey: Some(one_time[0]),
        ..bob.bundle()?
    };
    for event in alice.start_session(&mut rng, &bundle, now)? {
        println!("alice: {event:?}");
    }

    let script: [(bool, &str); 4] = [
        (true, "Hi Bob, this is end-to-end encrypted."),
        (false, "Hi Alice! The server only ever sees ciphertext."),
        (true, "Each message has its own key."),
        (false, "And a lost phone cannot read old messages."),
    ];
    for (from_alice, text) in script {
        let (sender, receiver) = if from_alice {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let wire = sender.encrypt(&mut rng, receiver.address(), text.as_bytes(), now)?;
        let got = receiver.decrypt(&mut rng, sender.address(), &wire, now)?;
        println!(
            "{} -> {}: {} bytes on the wire, decrypted: {:?}",
            sender.address(),
            receiver.address(),
            wire.len(),
            String::from_utf8_lossy(&got.plaintext)
        );
    }

    let on_alice = alice
        .safety_number(&bob.address().user)?
        .ok_or("bob is not trusted")?;
    let on_bob = bob
        .safety_number(&alice.address().user)?
        .ok_or("alice is not trusted")?;
    println!(
        "safety number on alice's screen: {}",
        on_alice.display_groups().join(" ")
    );
    println!(
        "safety number on bob's screen:   {}",
        on_bob.display_groups().join(" ")
    );
    println!(
        "bob scans alice's QR code: match = {}",
        on_bob.matches_qr(&on_alice.qr_payload())?
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
