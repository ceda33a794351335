// Unit tests of the Swift bindings: no server, no network. They mirror the
// Python (bindings/python/tests/test_unit.py) and Kotlin unit tests.

import Foundation
import Hush
import XCTest

/// Fails unless `body` throws a `HushError` that `matches` accepts.
func assertHushError<T>(_ body: @autoclosure () throws -> T, _ what: String,
                        file: StaticString = #filePath, line: UInt = #line,
                        _ matches: (HushError) -> Bool) {
    XCTAssertThrowsError(try body(), "expected HushError.\(what)", file: file, line: line) { error in
        guard let hush = error as? HushError else {
            XCTFail("expected HushError.\(what), got \(error)", file: file, line: line)
            return
        }
        XCTAssertTrue(matches(hush), "expected HushError.\(what), got \(hush)", file: file, line: line)
    }
}

func makeDevice(_ user: String, _ deviceId: UInt32 = 1) throws -> Device {
    try Device.createInMemory(newDevice: try NewDevice.forNewAccount(user: user), deviceId: deviceId)
}

/// Alice with a session to Bob, who has not answered yet.
func pair() throws -> (Device, Device) {
    let alice = try makeDevice("alice")
    let bob = try makeDevice("bob")
    let events = try alice.startSession(bundle: try bob.bundle())
    XCTAssertTrue(events.contains { event in
        if case let .identityTrusted(user, _) = event { return user == "bob" }
        return false
    })
    return (alice, bob)
}

func temporaryDirectory() throws -> URL {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("hush-swift-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

final class HushUnitTests: XCTestCase {
    func testEncryptDecryptBothWays() throws {
        let (alice, bob) = try pair()
        let a = try alice.address()
        let b = try bob.address()
        XCTAssertEqual(a, DeviceAddress(user: "alice", device: 1))
        let first = try alice.encrypt(peer: b, plaintext: Data("hello bob".utf8))
        let got = try bob.decrypt(sender: a, message: first)
        XCTAssertEqual(got.plaintext, Data("hello bob".utf8))
        XCTAssertTrue(got.events.contains { event in
            if case .identityTrusted = event { return true }
            return false
        })
        for i in 0..<20 {
            let message = Data("message \(i)".utf8)
            if i % 3 == 0 {
                let back = try alice.decrypt(sender: b, message: try bob.encrypt(peer: a, plaintext: message))
                XCTAssertEqual(back.plaintext, message)
            } else {
                let there = try bob.decrypt(sender: a, message: try alice.encrypt(peer: b, plaintext: message))
                XCTAssertEqual(there.plaintext, message)
            }
        }
        XCTAssertTrue(try alice.hasSession(peer: b))
    }

    func testPeerSessionsPassDataAndQueueTrustEvents() throws {
        let alice = try makeDevice("alice")
        let bob = try makeDevice("bob")
        let toBob = try alice.session(peer: try bob.address())
        assertHushError(try toBob.encrypt(plaintext: Data("too early".utf8)), "NoSession") {
            if case .NoSession = $0 { return true }
            return false
        }
        _ = try alice.startSession(bundle: try bob.bundle())
        let fromAlice = try bob.session(peer: try alice.address())
        XCTAssertEqual(try fromAlice.decrypt(message: try toBob.encrypt(plaintext: Data("first".utf8))),
                       Data("first".utf8))
        XCTAssertTrue(try bob.takeTrustEvents().contains { event in
            if case .identityTrusted = event { return true }
            return false
        })
        XCTAssertEqual(try bob.takeTrustEvents(), [])
        try bob.closeStore()
        assertHushError(try bob.address(), "AlreadyUsed") {
            if case .AlreadyUsed = $0 { return true }
            return false
        }
    }

    func testCiphertextHidesPlaintextAndIsFresh() throws {
        let (alice, bob) = try pair()
        let c1 = try alice.encrypt(peer: try bob.address(), plaintext: Data("same text".utf8))
        let c2 = try alice.encrypt(peer: try bob.address(), plaintext: Data("same text".utf8))
        XCTAssertNotEqual(c1, c2)
        XCTAssertNil(c1.range(of: Data("same text".utf8)))
    }

    func testErrorsAreThrownAsHushErrorCases() throws {
        let alice = try makeDevice("alice")
        let bob = try makeDevice("bob")
        assertHushError(try alice.encrypt(peer: try bob.address(), plaintext: Data("x".utf8)), "NoSession") {
            if case let .NoSession(peer) = $0 { return peer.contains("bob") }
            return false
        }
        assertHushError(try NewDevice.forNewAccount(user: ""), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        assertHushError(try alice.startSession(bundle: Data([1]) + Data("not a bundle".utf8)), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        assertHushError(try alice.startSession(bundle: Data(count: 100_000)), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        assertHushError(try makeDevice("carol").acceptIdentityChange(user: "bob", identity: Data("short".utf8)),
                        "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        // Every case is a HushError, and a Swift Error with a description.
        XCTAssertThrowsError(try alice.encrypt(peer: DeviceAddress(user: "nobody", device: 9),
                                               plaintext: Data("x".utf8))) { error in
            XCTAssertTrue(error is HushError)
            XCTAssertFalse(error.localizedDescription.isEmpty)
        }
    }

    func testTamperedMessageIsRefusedAndTheSessionSurvives() throws {
        let (alice, bob) = try pair()
        let a = try alice.address()
        let b = try bob.address()
        XCTAssertEqual(try bob.decrypt(sender: a, message: try alice.encrypt(peer: b, plaintext: Data("one".utf8))).plaintext,
                       Data("one".utf8))
        let good = try alice.encrypt(peer: b, plaintext: Data("two".utf8))
        var bad = good
        bad[bad.index(before: bad.endIndex)] ^= 1
        assertHushError(try bob.decrypt(sender: a, message: bad), "Refused") {
            if case .Refused = $0 { return true }
            return false
        }
        XCTAssertEqual(try bob.decrypt(sender: a, message: good).plaintext, Data("two".utf8))
        // A replay.
        assertHushError(try bob.decrypt(sender: a, message: good), "Refused") {
            if case .Refused = $0 { return true }
            return false
        }
    }

    func testIdentityChangeIsReportedUntilAccepted() throws {
        let (alice, bob) = try pair()
        _ = try bob.decrypt(sender: try alice.address(),
                            message: try alice.encrypt(peer: try bob.address(), plaintext: Data("hi".utf8)))
        // "alice" comes back with a new account identity (a new install).
        let impostor = try makeDevice("alice")
        var received: Data?
        XCTAssertThrowsError(try bob.startSession(bundle: try impostor.bundle())) { error in
            guard case let .IdentityChanged(user, trusted, newIdentity)? = error as? HushError else {
                return XCTFail("expected HushError.IdentityChanged, got \(error)")
            }
            XCTAssertEqual(user, "alice")
            XCTAssertEqual(trusted, try? alice.identityKey())
            XCTAssertEqual(newIdentity, try? impostor.identityKey())
            received = newIdentity
        }
        let identity = try XCTUnwrap(received)
        try bob.acceptIdentityChange(user: "alice", identity: identity)
        _ = try bob.startSession(bundle: try impostor.bundle())
        XCTAssertEqual(try bob.trustedIdentity(user: "alice"), try impostor.identityKey())
    }

    func testSafetyNumbersMatchAndTheQRCodeVerifies() throws {
        let (alice, bob) = try pair()
        _ = try bob.decrypt(sender: try alice.address(),
                            message: try alice.encrypt(peer: try bob.address(), plaintext: Data("hi".utf8)))
        let aliceNumber = try XCTUnwrap(try alice.safetyNumber(user: "bob"))
        let bobNumber = try XCTUnwrap(try bob.safetyNumber(user: "alice"))
        XCTAssertEqual(aliceNumber.digits, bobNumber.digits)
        XCTAssertEqual(aliceNumber.digits.count, 60)
        XCTAssertEqual(aliceNumber.groups.count, 12)
        XCTAssertTrue(try bob.verifySafetyQr(user: "alice", payload: aliceNumber.qrPayload))
        let carol = try makeDevice("carol")
        _ = try carol.startSession(bundle: try bob.bundle())
        let other = try XCTUnwrap(try carol.safetyNumber(user: "bob"))
        XCTAssertFalse(try bob.verifySafetyQr(user: "alice", payload: other.qrPayload))
        XCTAssertNil(try alice.safetyNumber(user: "nobody"))
    }

    func testSqliteStoreSurvivesReopen() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let key = generateStorageKey()
        XCTAssertEqual(key.count, 32)
        let path = dir.appendingPathComponent("alice.db").path
        var alice: Device? = try Device.createSqlite(path: path, storageKey: key,
                                                     newDevice: try NewDevice.forNewAccount(user: "alice"),
                                                     deviceId: 3)
        let bob = try makeDevice("bob")
        _ = try alice!.startSession(bundle: try bob.bundle())
        _ = try bob.decrypt(sender: try alice!.address(),
                            message: try alice!.encrypt(peer: try bob.address(), plaintext: Data("before".utf8)))
        // One instance per store.
        assertHushError(try Device.openSqlite(path: path, storageKey: key), "StoreLocked") {
            if case .StoreLocked = $0 { return true }
            return false
        }
        alice = nil // closes the store (ARC frees the Rust object now)
        assertHushError(try Device.openSqlite(path: path, storageKey: generateStorageKey()), "WrongStorageKey") {
            if case .WrongStorageKey = $0 { return true }
            return false
        }
        let reopened = try Device.openSqlite(path: path, storageKey: key)
        XCTAssertEqual(try reopened.address(), DeviceAddress(user: "alice", device: 3))
        let after = try reopened.encrypt(peer: try bob.address(), plaintext: Data("after".utf8))
        XCTAssertEqual(try bob.decrypt(sender: try reopened.address(), message: after).plaintext, Data("after".utf8))
        let reply = try bob.encrypt(peer: try reopened.address(), plaintext: Data("reply".utf8))
        XCTAssertEqual(try reopened.decrypt(sender: try bob.address(), message: reply).plaintext, Data("reply".utf8))

        assertHushError(try Device.openSqlite(path: dir.appendingPathComponent("empty.db").path, storageKey: key),
                        "NoAccount") {
            if case .NoAccount = $0 { return true }
            return false
        }
        let otherPath = dir.appendingPathComponent("other.db").path
        var first: Device? = try Device.createSqlite(path: otherPath, storageKey: key,
                                                     newDevice: try NewDevice.forNewAccount(user: "zoe"), deviceId: 1)
        XCTAssertNotNil(first)
        first = nil
        assertHushError(try Device.createSqlite(path: otherPath, storageKey: key,
                                                newDevice: try NewDevice.forNewAccount(user: "zoe"), deviceId: 2),
                        "AccountExists") {
            if case .AccountExists = $0 { return true }
            return false
        }
    }

    func testNewDeviceKeysAreUsedOnce() throws {
        let new = try NewDevice.forNewAccount(user: "dora")
        XCTAssertEqual(try new.user(), "dora")
        _ = try Device.createInMemory(newDevice: new, deviceId: 1)
        assertHushError(try Device.createInMemory(newDevice: new, deviceId: 2), "AlreadyUsed") {
            if case .AlreadyUsed = $0 { return true }
            return false
        }
        assertHushError(try new.registration(serverName: "localhost"), "AlreadyUsed") {
            if case .AlreadyUsed = $0 { return true }
            return false
        }
    }

    func testClientErrorsMapToHushError() throws {
        let device = try makeDevice("erin")
        assertHushError(try device.client(serverName: "not a server name!"), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        let client = try device.client(serverName: "localhost")
        XCTAssertFalse(try client.isAuthenticated())
        assertHushError(try client.sendText(recipient: "", text: "x"), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        assertHushError(try client.confirm(envelopeId: Data([1, 2, 3])), "InvalidArgument") {
            if case .InvalidArgument = $0 { return true }
            return false
        }
        assertHushError(try client.upload(transfer: 99, data: Data([0])), "TransferNotReady") {
            if case .TransferNotReady = $0 { return true }
            return false
        }
        // The client and the device share one state.
        XCTAssertEqual(try client.device().address(), try device.address())
    }

    func testAttachmentsRoundTrip() throws {
        let data = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        let encryptor = try AttachmentEncryptor(kind: .file, mediaType: "application/x-test",
                                                plaintextLen: UInt64(data.count))
        let expectedLength = try encryptor.ciphertextLen()
        var blob = Data()
        var offset = 0
        while offset < data.count {
            let end = min(offset + 65_536, data.count)
            blob.append(try encryptor.update(plaintext: data.subdata(in: offset..<end)))
            offset = end
        }
        blob.append(try encryptor.finish())
        XCTAssertEqual(UInt64(blob.count), expectedLength)
        XCTAssertNil(blob.range(of: data.subdata(in: 0..<64)))
        let pointer = try encryptor.pointer(blobId: Data("blob-1".utf8))
        let info = try attachmentInfo(pointer: pointer)
        XCTAssertEqual(info.kind, .file)
        XCTAssertEqual(info.mediaType, "application/x-test")
        XCTAssertEqual(info.plaintextLen, UInt64(data.count))
        XCTAssertEqual(info.ciphertextLen, expectedLength)

        func decrypt(_ blob: Data) throws -> Data {
            let decryptor = try AttachmentDecryptor(pointer: pointer)
            var out = Data()
            var at = 0
            while at < blob.count {
                let end = min(at + 10_000, blob.count)
                out.append(try decryptor.update(blob: blob.subdata(in: at..<end)))
                at = end
            }
            try decryptor.finish()
            return out
        }
        XCTAssertEqual(try decrypt(blob), data)

        var tampered = blob
        tampered[tampered.startIndex + 100] ^= 1
        assertHushError(try decrypt(tampered), "Attachment") {
            if case .Attachment = $0 { return true }
            return false
        }
        assertHushError(try decrypt(blob.subdata(in: 0..<(blob.count - 10))), "Attachment") {
            if case .Attachment = $0 { return true }
            return false
        }
        // The encryptor is spent.
        assertHushError(try encryptor.update(plaintext: Data([1])), "AlreadyUsed") {
            if case .AlreadyUsed = $0 { return true }
            return false
        }
        assertHushError(try AttachmentEncryptor(kind: .image, mediaType: "image/png", plaintextLen: 1 << 40),
                        "Attachment") {
            if case .Attachment = $0 { return true }
            return false
        }
    }

    func testAppStorageReceivesAtomicBatchesAndReopens() throws {
        let storage = DictStorage()
        let key = generateStorageKey()
        var alice: Device? = try Device.createWithStorage(storage: storage, storageKey: key,
                                                          newDevice: try NewDevice.forNewAccount(user: "alice"),
                                                          deviceId: 1)
        XCTAssertEqual(storage.batches, 1)
        XCTAssertFalse(storage.snapshot().isEmpty)
        let bob = try makeDevice("bob")
        _ = try alice!.startSession(bundle: try bob.bundle())
        let before = storage.snapshot()
        // A failing apply keeps nothing, and the app's error comes back unchanged.
        storage.failNext = true
        XCTAssertThrowsError(try alice!.encrypt(peer: try bob.address(), plaintext: Data("lost".utf8))) { error in
            guard case let .Storage(reason)? = error as? HushError else {
                return XCTFail("expected HushError.Storage, got \(error)")
            }
            XCTAssertTrue(reason.contains("disk full"), reason)
        }
        XCTAssertEqual(storage.snapshot(), before)
        let message = try alice!.encrypt(peer: try bob.address(), plaintext: Data("kept".utf8))
        XCTAssertNotEqual(storage.snapshot(), before)
        // Nothing readable lands in the app's database.
        XCTAssertFalse(storage.snapshot().values.contains { $0.range(of: Data("kept".utf8)) != nil })
        alice = nil
        let reopened = try Device.openWithStorage(storage: storage, storageKey: key)
        XCTAssertEqual(try bob.decrypt(sender: try reopened.address(), message: message).plaintext, Data("kept".utf8))
    }
}

/// App-provided storage over a dictionary; each batch lands whole or not at all.
final class DictStorage: AppStorage, @unchecked Sendable {
    struct RowKey: Hashable {
        let table: UInt8
        let key: Data
    }

    private let lock = NSLock()
    private var rows: [RowKey: Data] = [:]
    private var applied = 0
    private var fail = false

    var batches: Int {
        lock.lock()
        defer { lock.unlock() }
        return applied
    }

    var failNext: Bool {
        get {
            lock.lock()
            defer { lock.unlock() }
            return fail
        }
        set {
            lock.lock()
            fail = newValue
            lock.unlock()
        }
    }

    func snapshot() -> [RowKey: Data] {
        lock.lock()
        defer { lock.unlock() }
        return rows
    }

    func get(table: UInt8, key: Data) throws -> Data? {
        lock.lock()
        defer { lock.unlock() }
        return rows[RowKey(table: table, key: key)]
    }

    func scan(table: UInt8) throws -> [StoredRow] {
        lock.lock()
        defer { lock.unlock() }
        return rows.filter { $0.key.table == table }.map { StoredRow(key: $0.key.key, value: $0.value) }
    }

    func apply(batch: [StoreOp]) throws {
        lock.lock()
        defer { lock.unlock() }
        if fail {
            fail = false
            throw HushError.Storage(reason: "disk full")
        }
        var staged = rows
        for op in batch {
            switch op {
            case let .put(table, key, value):
                staged[RowKey(table: table, key: key)] = value
            case let .delete(table, key):
                staged.removeValue(forKey: RowKey(table: table, key: key))
            }
        }
        rows = staged
        applied += 1
    }
}
