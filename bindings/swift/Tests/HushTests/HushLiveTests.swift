// Live tests: Swift clients through a real hush-server over TLS, with
// HushConnection (Network.framework). bindings/swift/check.sh starts the
// server and sets
//
//   HUSH_TEST_SERVER   host:port of the server (127.0.0.1:PORT)
//   HUSH_TEST_CA       its development certificate (DATA_DIR/dev-cert.pem)
//
// Without them the tests are skipped, except under CI=true, where they fail:
// CI must not pass without having run them. The connection helper needs
// Network.framework; off Apple platforms the live tests are skipped.

import Foundation
import Hush
import XCTest

struct LiveConfigError: Error, CustomStringConvertible {
    let description: String
}

/// The live server's address and certificate, or a skip (or, under CI, an error).
func liveConfig() throws -> (address: String, caFile: String) {
    let env = ProcessInfo.processInfo.environment
    if let address = env["HUSH_TEST_SERVER"], !address.isEmpty,
       let caFile = env["HUSH_TEST_CA"], !caFile.isEmpty {
        return (address, caFile)
    }
    if env["CI"] == "true" {
        throw LiveConfigError(description:
            "CI=true but HUSH_TEST_SERVER and HUSH_TEST_CA are not set: run bindings/swift/check.sh")
    }
    throw XCTSkip("HUSH_TEST_SERVER and HUSH_TEST_CA are not set (bindings/swift/check.sh sets them)")
}

private var userCounter = 0

/// A fresh user id per call (the server keeps accounts between tests).
func uniqueUser(_ prefix: String) -> String {
    userCounter += 1
    let pid = ProcessInfo.processInfo.processIdentifier
    return "sw\(prefix)\(pid)x\(userCounter)r\(UInt32.random(in: 0..<1_000_000))"
}

#if canImport(Network)

let serverName = "localhost"

final class HushLiveTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try temporaryDirectory()
    }

    override func tearDownWithError() throws {
        if let directory = directory {
            try? FileManager.default.removeItem(at: directory)
        }
    }

    private func liveServer(tls: HushTLS? = nil) throws -> HushServer {
        let config = try liveConfig()
        return try HushServer(address: config.address, serverName: serverName,
                              tls: tls ?? HushTLS.trusting(pemFile: config.caFile))
    }

    private func newDevice(_ server: HushServer, _ user: String) async throws -> Device {
        let new = try NewDevice.forNewAccount(user: user)
        let deviceId = try await registerAccount(new, server: server)
        let path = directory.appendingPathComponent("\(user).db").path
        let device = try Device.createSqlite(path: path, storageKey: generateStorageKey(), newDevice: new,
                                             deviceId: deviceId)
        // The first login publishes the prekeys (PreKeysReplenished follows,
        // possibly after QueueEmpty): only then can others reach the device.
        let first = HushConnection(client: try device.client(serverName: server.serverName), server: server)
        first.start()
        _ = try await first.waitFor { event in
            if case .client(.preKeysReplenished) = event { return true }
            return false
        }
        await first.shutdown()
        return device
    }

    /// A started connection, once the server's queue is delivered.
    private func connect(_ server: HushServer, _ device: Device) async throws -> HushConnection {
        let connection = HushConnection(client: try device.client(serverName: server.serverName), server: server)
        addTeardownBlock { connection.close() }
        connection.start()
        _ = try await connection.waitFor { event in
            if case .client(.queueEmpty) = event { return true }
            return false
        }
        XCTAssertTrue(connection.isConnected)
        return connection
    }

    private func isMessage(_ text: String) -> (HushConnection.Event) -> Bool {
        return { event in
            if case let .client(.message(_, _, _, content)) = event, case let .text(body) = content.body {
                return body == text
            }
            return false
        }
    }

    private func isSent(_ event: HushConnection.Event) -> Bool {
        if case .client(.sent) = event { return true }
        return false
    }

    func testTwoSwiftClientsTalkThroughTheServer() async throws {
        let server = try liveServer()
        let aliceId = uniqueUser("alice")
        let bobId = uniqueUser("bob")
        let alice = try await newDevice(server, aliceId)
        let bob = try await newDevice(server, bobId)
        let a = try await connect(server, alice)
        let b = try await connect(server, bob)

        let sentId = try a.sendText(recipient: bobId, text: "hello bob")
        let sent = try await a.waitFor(isSent)
        guard case let .client(.sent(messageId, recipient)) = sent else { return XCTFail("\(sent)") }
        XCTAssertEqual(messageId, sentId)
        XCTAssertEqual(recipient, bobId)

        let got = try await b.waitFor(isMessage("hello bob"))
        guard case let .client(.message(envelopeId, sender, _, _)) = got else { return XCTFail("\(got)") }
        XCTAssertEqual(sender.user, aliceId)
        try b.confirm(envelopeId: envelopeId)

        try b.sendText(recipient: aliceId, text: "hello alice")
        let reply = try await a.waitFor(isMessage("hello alice"))
        guard case let .client(.message(replyEnvelope, replySender, _, _)) = reply else { return XCTFail("\(reply)") }
        XCTAssertEqual(replySender.user, bobId)
        try a.confirm(envelopeId: replyEnvelope)

        await a.shutdown()
        await b.shutdown()
        XCTAssertFalse(a.isConnected)
        // The last event of a closed connection.
        let last = try await a.waitFor { event in
            if case .disconnected(_, .none) = event { return true }
            return false
        }
        guard case .disconnected(_, .none) = last else { return XCTFail("\(last)") }

        // Both sides compare the same safety number.
        XCTAssertEqual(try alice.safetyNumber(user: bobId)?.digits, try bob.safetyNumber(user: aliceId)?.digits)
    }

    func testUnconfirmedMessagesComeBackAfterReconnecting() async throws {
        let server = try liveServer()
        let aliceId = uniqueUser("alice")
        let bobId = uniqueUser("bob")
        let alice = try await newDevice(server, aliceId)
        let bob = try await newDevice(server, bobId)
        let a = try await connect(server, alice)
        try a.sendText(recipient: bobId, text: "kept until confirmed")
        _ = try await a.waitFor(isSent)

        let first = try await connect(server, bob)
        _ = try await first.waitFor(isMessage("kept until confirmed"))
        await first.shutdown() // not confirmed

        let again = try await connect(server, bob)
        let event = try await again.waitFor(isMessage("kept until confirmed"))
        guard case let .client(.message(envelopeId, _, _, _)) = event else { return XCTFail("\(event)") }
        try again.confirm(envelopeId: envelopeId)
        await again.shutdown()
        await a.shutdown()
    }

    func testLinkingASecondSwiftDevice() async throws {
        let server = try liveServer()
        let user = uniqueUser("multi")
        let peer = uniqueUser("peer")
        let first = try await newDevice(server, user)
        let other = try await newDevice(server, peer)
        let f = try await connect(server, first)

        // The new device shows a code; the first device approves it.
        var sink: AsyncStream<Data>.Continuation?
        let codes = AsyncStream<Data> { sink = $0 }
        let codeSink = try XCTUnwrap(sink)
        let newSide = Task { () throws -> (NewDevice, UInt32) in
            let account = try await waitForLink(server: server, timeout: 30) { code in
                codeSink.yield(code)
            }
            return try await registerLinkedDevice(account, server: server)
        }
        var iterator = codes.makeAsyncIterator()
        let shown = await iterator.next()
        let code = try XCTUnwrap(shown)
        try f.call { try $0.requestLinkPermission() }
        let permissionEvent = try await f.waitFor { event in
            if case .client(.linkPermission) = event { return true }
            return false
        }
        guard case let .client(.linkPermission(permission)) = permissionEvent else {
            return XCTFail("\(permissionEvent)")
        }
        try f.call { try $0.sendLink(code: code, permission: permission) }
        let (keys, deviceId) = try await newSide.value
        let second = try Device.createSqlite(path: directory.appendingPathComponent("second.db").path,
                                             storageKey: generateStorageKey(), newDevice: keys, deviceId: deviceId)
        XCTAssertEqual(try second.address().user, user)
        XCTAssertEqual(try second.identityKey(), try first.identityKey())
        await f.shutdown()

        let s = try await connect(server, second)
        let o = try await connect(server, other)
        try o.sendText(recipient: user, text: "to both devices")
        _ = try await o.waitFor(isSent)
        let got = try await s.waitFor(isMessage("to both devices"))
        guard case let .client(.message(envelopeId, _, _, _)) = got else { return XCTFail("\(got)") }
        try s.confirm(envelopeId: envelopeId)
        await s.shutdown()
        await o.shutdown()
    }

    func testRefusedRegistrationThrows() async throws {
        let server = try liveServer()
        let user = uniqueUser("taken")
        _ = try await registerAccount(try NewDevice.forNewAccount(user: user), server: server)
        do {
            _ = try await registerAccount(try NewDevice.forNewAccount(user: user), server: server)
            XCTFail("a second registration of \(user) was accepted")
        } catch HushConnectionError.refused(let code, _) {
            XCTAssertEqual(code, .conflict)
        }
    }

    func testPinningRefusesAnotherCertificate() async throws {
        let config = try liveConfig()
        let pem = try String(contentsOfFile: config.caFile, encoding: .utf8)
        let der = try XCTUnwrap(HushTLS.derCertificates(fromPEM: pem).first)
        let good = HushTLS.sha256Hex(of: der)

        // The right pin alone is enough.
        let pinned = try liveServer(tls: .pinned(sha256Hex: good))
        _ = try await registerAccount(try NewDevice.forNewAccount(user: uniqueUser("pin")), server: pinned)

        // A wrong pin is refused, even with the right anchor.
        let wrongPin = try liveServer(tls: .trusting(pem: pem, pinSHA256Hex: String(repeating: "00", count: 32)))
        do {
            _ = try await registerAccount(try NewDevice.forNewAccount(user: uniqueUser("pin")), server: wrongPin)
            XCTFail("a wrong pin was accepted")
        } catch HushConnectionError.connectFailed(let reason) {
            XCTAssertTrue(reason.contains("does not match the pin"), reason)
        }

        // The system trust store does not know the development certificate.
        let system = try liveServer(tls: .system)
        do {
            _ = try await registerAccount(try NewDevice.forNewAccount(user: uniqueUser("sys")), server: system)
            XCTFail("the development certificate was trusted by the system store")
        } catch HushConnectionError.connectFailed {
        }

        // Nor is another name accepted with the right anchor.
        var otherName = try liveServer()
        otherName.serverName = "other.example"
        do {
            _ = try await registerAccount(try NewDevice.forNewAccount(user: uniqueUser("name")), server: otherName)
            XCTFail("a certificate for localhost was accepted for other.example")
        } catch HushConnectionError.connectFailed {
        }
    }
}

#else

final class HushLiveTests: XCTestCase {
    func testLiveTestsNeedNetworkFramework() throws {
        _ = try liveConfig()
        throw XCTSkip("HushConnection needs Network.framework: the live tests run on Apple platforms only")
    }
}

#endif
