//! Deterministic test vectors (`tests/vectors/*.json`), regenerated and compared
//! on every test run. Set `HUSH_REGENERATE_VECTORS=1` to rewrite the files
//! after a deliberate format change (which is a protocol version bump).

use std::collections::VecDeque;
use std::convert::Infallible;

use rand_core::{TryCryptoRng, TryRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fingerprint::{SafetyNumber, fingerprint};
use crate::keys::{
    DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, OneTimePreKey, PqPreKeyKind,
    PqPreKeySecret, PreKeyBundle, PreKeyId, PreKeyKind, PreKeySettings, PreKeyState, UserId,
    X25519PublicKey, diffie_hellman,
};
use crate::ratchet::Ratchet;
use crate::secret::Secret32;
use crate::x3dh::{self, PreKeyChoice};

/// Hands out exactly the scripted byte strings, in order.
struct ScriptedRng(VecDeque<Vec<u8>>);

impl TryRng for ScriptedRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("Hush only asks for byte strings")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("Hush only asks for byte strings")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let next = self.0.pop_front().expect("script exhausted");
        assert_eq!(next.len(), dst.len(), "script out of step");
        dst.copy_from_slice(&next);
        Ok(())
    }
}

impl TryCryptoRng for ScriptedRng {}

/// `SHA-256("hush vector " || label)`, truncated to `len`.
fn input(label: &str, len: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hush vector ");
    h.update(label.as_bytes());
    h.finalize()[..len].to_vec()
}

fn secret(label: &str) -> Secret32 {
    let mut b = [0u8; 32];
    b.copy_from_slice(&input(label, 32));
    Secret32::new(b)
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn keys() -> Value {
    let cases: Vec<Value> = (0..3)
        .map(|i| {
            let seed = secret(&format!("identity {i}"));
            let id = IdentityKeyPair::from_seed(&seed);
            json!({
                "ed25519_seed": hx(seed.as_bytes()),
                "ed25519_public": hx(&id.public_key().to_bytes()),
                "x25519_secret": hx(id.x25519_secret().as_bytes()),
                "x25519_public": hx(id.public_key().to_x25519().as_bytes()),
            })
        })
        .collect();
    json!({
        "description": "Account identity: Ed25519 seed, public key, and its X25519 form (secret = first 32 bytes of SHA-512(seed), clamped by X25519 itself; public = birational map of the Ed25519 point).",
        "cases": cases,
    })
}

/// An X3DH case (`pq` false, header version 1) or a PQXDH case (`pq` true,
/// header version 2: a PQ one-time prekey with the one-time case, the PQ
/// last-resort prekey with the last-resort case).
fn x3dh_case(one_time: bool, pq: bool) -> Value {
    let tag = if one_time { "one-time" } else { "last-resort" };
    // The PQXDH cases draw their labels from another namespace, so the X3DH
    // file stays as it was.
    let ns = if pq { "pqxdh" } else { "x3dh" };
    let secret = |label: &str| secret(&label.replacen("x3dh", ns, 1));
    let input = |label: &str, len: usize| input(&label.replacen("x3dh", ns, 1), len);
    let t0 = 1_700_000_000;
    let alice_addr = DeviceAddress::new(UserId::new("alice").unwrap(), DeviceId(1));
    let bob_addr = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(2));
    let (a_seed, b_seed) = (secret("x3dh alice identity"), secret("x3dh bob identity"));
    let (a_auth, b_auth) = (secret("x3dh alice auth"), secret("x3dh bob auth"));
    let alice = IdentityKeyPair::from_seed(&a_seed);
    let bob = IdentityKeyPair::from_seed(&b_seed);
    let a_cert = alice.certify_device(
        &alice_addr.user,
        alice_addr.device,
        &DeviceAuthKeyPair::from_seed(&a_auth).public_key(),
        t0,
    );
    let b_cert = bob.certify_device(
        &bob_addr.user,
        bob_addr.device,
        &DeviceAuthKeyPair::from_seed(&b_auth).public_key(),
        t0,
    );
    let (spk, lrk, otk, ek) = (
        secret("x3dh bob signed prekey"),
        secret("x3dh bob last-resort prekey"),
        secret("x3dh bob one-time prekey"),
        secret("x3dh alice ephemeral"),
    );
    let mut script = ScriptedRng(VecDeque::from([
        spk.as_bytes().to_vec(),
        lrk.as_bytes().to_vec(),
    ]));
    let prekeys = PreKeyState::new(&mut script, &bob, &bob_addr, PreKeySettings::default(), t0);
    let otk_public = X25519PublicKey::from_secret(&otk);
    let (pq_d, pq_z, pq_m) = (
        secret("x3dh bob pq prekey d"),
        secret("x3dh bob pq prekey z"),
        secret("x3dh alice kem randomness"),
    );
    let pq_kind = if one_time {
        PqPreKeyKind::OneTime
    } else {
        PqPreKeyKind::LastResort
    };
    let mut script = ScriptedRng(VecDeque::from([
        pq_d.as_bytes().to_vec(),
        pq_z.as_bytes().to_vec(),
    ]));
    let pq_prekey =
        PqPreKeySecret::generate(&mut script, &bob, &bob_addr, pq_kind, PreKeyId(200), t0);
    let bundle = PreKeyBundle {
        identity: bob.public_key(),
        certificate: b_cert.clone(),
        signed_prekey: prekeys.current(PreKeyKind::Signed).unwrap().clone(),
        last_resort_prekey: prekeys.current(PreKeyKind::LastResort).unwrap().clone(),
        one_time_prekey: one_time.then_some(OneTimePreKey {
            id: PreKeyId(100),
            key: otk_public,
        }),
        pq_prekey: pq.then(|| pq_prekey.public.clone()),
    };
    let mut script = ScriptedRng(VecDeque::from([ek.as_bytes().to_vec()]));
    if pq {
        script.0.push_back(pq_m.as_bytes().to_vec());
    }
    let (header, agreement, ratchet_key) = x3dh::initiate(
        &mut script,
        &alice,
        &a_cert,
        &bundle,
        x3dh::ClassicalFallback::Allow,
        t0 + 60,
    )
    .unwrap();
    let medium = if one_time { &spk } else { &lrk };
    let kem = header.prekeys.kem().cloned();
    assert_eq!(kem.is_some(), pq);
    let kem_secret = kem
        .as_ref()
        .map(|k| pq_prekey.seed.decapsulate(&k.ciphertext));
    let b_side = x3dh::respond(
        &bob,
        &bob_addr,
        &header,
        medium,
        one_time.then_some(&otk),
        kem_secret.as_ref(),
    )
    .unwrap();
    assert_eq!(agreement.shared_secret, b_side.shared_secret);
    assert_eq!(agreement.associated_data, b_side.associated_data);
    let medium_public = X25519PublicKey::from_secret(medium);
    assert_eq!(ratchet_key, medium_public);
    let ek_public = X25519PublicKey::from_secret(&ek);
    let dh1 = diffie_hellman(&alice.x25519_secret(), &medium_public).unwrap();
    let dh2 = diffie_hellman(&ek, &bob.public_key().to_x25519()).unwrap();
    let dh3 = diffie_hellman(&ek, &medium_public).unwrap();
    let dh4 = one_time.then(|| hx(diffie_hellman(&ek, &otk_public).unwrap().as_bytes()));
    assert_eq!(header.base_key, ek_public);
    // The first message of the session, in the initial form.
    let first_ratchet = secret(&format!("x3dh {tag} alice first ratchet key"));
    let first_nonce = input(&format!("x3dh {tag} first nonce"), 12);
    let first_plaintext = format!("first message ({tag})").into_bytes();
    let mut script = ScriptedRng(VecDeque::from([first_ratchet.as_bytes().to_vec()]));
    let mut session = crate::session::SessionState::initiator(
        &mut script,
        header.clone(),
        agreement.shared_secret.clone(),
        agreement.associated_data.clone(),
        ratchet_key,
    )
    .unwrap();
    let mut script = ScriptedRng(VecDeque::from([first_nonce.clone()]));
    let first_message = session
        .encrypt(&mut script, &first_plaintext)
        .unwrap()
        .to_bytes();
    assert!(matches!(header.prekeys.classical(), PreKeyChoice::OneTime { .. }) == one_time);
    let mut case = json!({
        "case": tag,
        "alice": {
            "user": "alice", "device": 1,
            "identity_seed": hx(a_seed.as_bytes()),
            "identity_public": hx(&alice.public_key().to_bytes()),
            "auth_seed": hx(a_auth.as_bytes()),
            "certificate": hx(&a_cert.to_bytes()),
            "ephemeral_secret": hx(ek.as_bytes()),
            "ephemeral_public": hx(ek_public.as_bytes()),
        },
        "bob": {
            "user": "bob", "device": 2,
            "identity_seed": hx(b_seed.as_bytes()),
            "identity_public": hx(&bob.public_key().to_bytes()),
            "auth_seed": hx(b_auth.as_bytes()),
            "certificate": hx(&b_cert.to_bytes()),
            "signed_prekey_secret": hx(spk.as_bytes()),
            "signed_prekey": hx(&bundle.signed_prekey.to_bytes()),
            "last_resort_prekey_secret": hx(lrk.as_bytes()),
            "last_resort_prekey": hx(&bundle.last_resort_prekey.to_bytes()),
            "one_time_prekey_id": one_time.then_some(100),
            "one_time_prekey_secret": one_time.then(|| hx(otk.as_bytes())),
            "one_time_prekey_public": one_time.then(|| hx(otk_public.as_bytes())),
        },
        "dh1": hx(dh1.as_bytes()),
        "dh2": hx(dh2.as_bytes()),
        "dh3": hx(dh3.as_bytes()),
        "dh4": dh4,
        "shared_secret": hx(agreement.shared_secret.as_bytes()),
        "associated_data": hx(&agreement.associated_data),
        "initial_header": hx(&header.to_bytes()),
        "first_message": {
            "ratchet_secret": hx(first_ratchet.as_bytes()),
            "nonce": hx(&first_nonce),
            "plaintext": hx(&first_plaintext),
            "session_message": hx(&first_message),
        },
    });
    if let (Some(kem), Some(ss)) = (kem, kem_secret) {
        case["bob"]["pq_prekey_seed_d"] = json!(hx(pq_d.as_bytes()));
        case["bob"]["pq_prekey_seed_z"] = json!(hx(pq_z.as_bytes()));
        case["bob"]["pq_prekey"] = json!(hx(&pq_prekey.public.to_bytes()));
        case["alice"]["kem_randomness"] = json!(hx(pq_m.as_bytes()));
        case["kem_ciphertext"] = json!(hx(kem.ciphertext.as_bytes()));
        case["kem_shared_secret"] = json!(hx(ss.as_bytes()));
    }
    case
}

fn x3dh() -> Value {
    json!({
        "description": "X3DH between alice.1 (initiator) and bob.2, with a one-time prekey (signed prekey + one-time, DH1..DH4) and without (last-resort prekey, DH1..DH3). Session creation time in the header is 1700000060. first_message is Alice's first session message in the initial form: tag 0x01, the initial header, and a ratchet message whose associated data is AD || initial header || ratchet header.",
        "cases": [x3dh_case(true, false), x3dh_case(false, false)],
    })
}

fn pqxdh() -> Value {
    json!({
        "description": "PQXDH (header version 2) between alice.1 (initiator) and bob.2, laid out as x3dh.json, plus Bob's ML-KEM-1024 prekey (FIPS 203 seed d || z, signed encoding), Alice's encapsulation randomness m (FIPS 203 ML-KEM.Encaps_internal), the ciphertext and the KEM shared secret SS. Case one-time: signed prekey + one-time prekey + PQ one-time prekey (id 200); case last-resort: last-resort prekey + PQ last-resort prekey (id 200). SK = HKDF-SHA256(salt 0^32, 0xFF^32 || DH1..DH4 || SS, info \"hush.v2.pqxdh\").",
        "cases": [x3dh_case(true, true), x3dh_case(false, true)],
    })
}

fn ratchet() -> Value {
    let sk = secret("ratchet shared secret");
    let ad = input("ratchet associated data", 32);
    let bob_prekey = secret("ratchet bob prekey");
    let bob_prekey_public = X25519PublicKey::from_secret(&bob_prekey);
    let mut alice_script = ScriptedRng(VecDeque::new());
    let a_ratchet0 = secret("ratchet alice ratchet key 0");
    alice_script.0.push_back(a_ratchet0.as_bytes().to_vec());
    let mut alice = Ratchet::initiator(&mut alice_script, sk.clone(), bob_prekey_public).unwrap();
    let mut bob = Ratchet::responder(sk.clone(), bob_prekey, bob_prekey_public);
    let mut log = vec![
        json!({"event": "alice initialised", "ratchet_secret": hx(a_ratchet0.as_bytes()), "root_key": hx(alice.root_key().as_bytes())}),
    ];
    let mut sent: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();

    let send = |who: &str,
                r: &mut Ratchet,
                n: usize,
                log: &mut Vec<Value>,
                sent: &mut Vec<(String, Vec<u8>, Vec<u8>)>| {
        let name = format!("{who}{n}");
        let step = r.will_step_on_send();
        let mut script = ScriptedRng(VecDeque::new());
        let ratchet_secret = secret(&format!("ratchet {name} ratchet key"));
        if step {
            script.0.push_back(ratchet_secret.as_bytes().to_vec());
        }
        let nonce = input(&format!("ratchet {name} nonce"), 12);
        script.0.push_back(nonce.clone());
        let plaintext = format!("message {name}").into_bytes();
        r.ensure_sending_chain(&mut script).unwrap();
        let message_key = r.next_message_key().unwrap();
        let wire = r.encrypt(&mut script, &ad, &plaintext).unwrap();
        log.push(json!({
            "event": "send",
            "message": name,
            "dh_step": step,
            "ratchet_secret": step.then(|| hx(ratchet_secret.as_bytes())),
            "root_key_after": hx(r.root_key().as_bytes()),
            "message_key": hx(message_key.as_bytes()),
            "nonce": hx(&nonce),
            "plaintext": hx(&plaintext),
            "header": hx(&wire[..crate::ratchet::HEADER_LEN]),
            "message_bytes": hx(&wire),
        }));
        sent.push((name, wire, plaintext));
    };
    let recv = |who: &str,
                r: &mut Ratchet,
                name: &str,
                sent: &[(String, Vec<u8>, Vec<u8>)],
                log: &mut Vec<Value>| {
        let (_, wire, plaintext) = sent.iter().find(|(n, _, _)| n == name).unwrap();
        let got = r.decrypt(&ad, wire, 0).unwrap();
        assert_eq!(&got, plaintext);
        log.push(json!({
            "event": "receive",
            "by": who,
            "message": name,
            "root_key_after": hx(r.root_key().as_bytes()),
            "skipped_keys_kept": r.skipped_len(),
        }));
    };
    for n in 0..3 {
        send("a", &mut alice, n, &mut log, &mut sent);
    }
    recv("bob", &mut bob, "a2", &sent, &mut log);
    recv("bob", &mut bob, "a0", &sent, &mut log);
    send("b", &mut bob, 0, &mut log, &mut sent);
    recv("alice", &mut alice, "b0", &sent, &mut log);
    send("a", &mut alice, 3, &mut log, &mut sent);
    recv("bob", &mut bob, "a3", &sent, &mut log);
    recv("bob", &mut bob, "a1", &sent, &mut log);
    json!({
        "description": "A Double Ratchet conversation: alice sends a0 a1 a2; bob receives a2 then a0 (a1 skipped); bob replies b0 (a DH step); alice receives it and sends a3 (a DH step); bob receives a3, then a1 from the previous chain. Every random value (ratchet secrets, nonces) is listed where it is used; the receiver's decrypt time is 0.",
        "shared_secret": hx(sk.as_bytes()),
        "associated_data": hx(&ad),
        "bob_prekey_secret": hx(secret("ratchet bob prekey").as_bytes()),
        "bob_prekey_public": hx(bob_prekey_public.as_bytes()),
        "steps": log,
    })
}

fn fingerprints() -> Value {
    let a = IdentityKeyPair::from_seed(&secret("fingerprint alice")).public_key();
    let b = IdentityKeyPair::from_seed(&secret("fingerprint bob")).public_key();
    let (ua, ub) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
    let n = SafetyNumber::new(&ua, &a, &ub, &b);
    json!({
        "description": "Safety number of alice and bob as computed on alice's device; bob's shows the same digits and the QR payload with the halves swapped.",
        "alice": {"user": "alice", "identity_public": hx(&a.to_bytes()), "fingerprint": hx(&fingerprint(&ua, &a))},
        "bob": {"user": "bob", "identity_public": hx(&b.to_bytes()), "fingerprint": hx(&fingerprint(&ub, &b))},
        "safety_number": n.digits(),
        "qr_payload_on_alice": hx(&n.qr_payload()),
    })
}

fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("keys.json", keys()),
        ("x3dh.json", x3dh()),
        ("pqxdh.json", pqxdh()),
        ("ratchet.json", ratchet()),
        ("fingerprint.json", fingerprints()),
    ]
}

#[test]
fn vectors_match_the_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors");
    let regenerate = std::env::var_os("HUSH_REGENERATE_VECTORS").is_some();
    assert!(
        !(regenerate && std::env::var("CI").as_deref() == Ok("true")),
        "CI compares the vectors; it never regenerates them"
    );
    for (name, value) in all() {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = dir.join(name);
        if regenerate {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stored == text,
            "tests/vectors/{name} differs from what this build computes: the wire or key format changed. \
             If deliberate, bump the version and run HUSH_REGENERATE_VECTORS=1 cargo test -p hush vectors"
        );
    }
}
