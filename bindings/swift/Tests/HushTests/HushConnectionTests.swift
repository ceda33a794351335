// Tests of the connection helper that need Network.framework but no server:
// certificate and pin parsing, and reconnecting with backoff.

#if canImport(Network)
import Foundation
import Hush
import XCTest

/// A self-signed certificate for "localhost" (a test fixture, no key kept).
let fixturePEM = """
-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUE/Pdc/49R0xBXYbWjwlv6fW3R3owCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwNTAzMTQxMFoXDTM2MTIwMjAz
MTQxMFowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEiaLlQTxDxk2Cuj4vYx5s8Mpwt0EZaIblpLppx+VLBKr3K+QE1/yvHSMc
VLQfhGltma7bbkps8WiD1Rz8dhXMS6NpMGcwHQYDVR0OBBYEFP++Nbvo+64OTeDB
DOWA4Vk0EVpLMB8GA1UdIwQYMBaAFP++Nbvo+64OTeDBDOWA4Vk0EVpLMA8GA1Ud
EwEB/wQFMAMBAf8wFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMCA0gA
MEUCIQDWF9Yv+46EZMJkEtOOqKn8w7QBfdorPNj2QdPR4KwP1wIgRaged/sjXd81
BfCUhdvObaFW9YSbhc7gBF2RcOukwtQ=
-----END CERTIFICATE-----
"""
/// `openssl x509 -outform DER | sha256sum` of it.
let fixtureSHA256 = "ee7304acd53a42070789a2e75c020f491967e085f7a7e00306091c4fcc79d410"

final class HushConnectionTests: XCTestCase {
    func testPEMAndPinParsing() throws {
        let ders = try HushTLS.derCertificates(fromPEM: fixturePEM)
        XCTAssertEqual(ders.count, 1)
        XCTAssertEqual(HushTLS.sha256Hex(of: ders[0]), fixtureSHA256)

        let tls = try HushTLS.trusting(pem: fixturePEM, pinSHA256Hex: fixtureSHA256.uppercased())
        XCTAssertEqual(tls.anchors, ders)
        XCTAssertEqual(tls.pinSHA256?.count, 32)
        // Colons are allowed, as tools print fingerprints.
        let colons = stride(from: 0, to: 64, by: 2).map { offset -> String in
            let start = fixtureSHA256.index(fixtureSHA256.startIndex, offsetBy: offset)
            return String(fixtureSHA256[start..<fixtureSHA256.index(start, offsetBy: 2)])
        }.joined(separator: ":")
        XCTAssertEqual(try HushTLS.pinned(sha256Hex: colons).pinSHA256, tls.pinSHA256)

        XCTAssertThrowsError(try HushTLS.pinned(sha256Hex: "abcd"))
        XCTAssertThrowsError(try HushTLS.pinned(sha256Hex: String(repeating: "zz", count: 32)))
        XCTAssertThrowsError(try HushTLS.derCertificates(fromPEM: "not a certificate"))
        XCTAssertThrowsError(try HushTLS.derCertificates(fromPEM: """
            -----BEGIN CERTIFICATE-----
            AAAA
            -----END CERTIFICATE-----
            """))

        let server = try HushServer(address: "[::1]:7443", serverName: "localhost", tls: tls)
        XCTAssertEqual(server.host, "::1")
        XCTAssertEqual(server.port, 7443)
        XCTAssertThrowsError(try HushServer(address: "no-port", serverName: "localhost"))
    }

    func testReconnectsWithExponentialBackoffAndClosesCleanly() async throws {
        // Nothing listens on the discard port of the loopback address.
        let server = HushServer(host: "127.0.0.1", port: 9, serverName: "localhost",
                                tls: try .trusting(pem: fixturePEM), connectTimeout: 2)
        let device = try makeDevice("early")
        let connection = HushConnection(client: try device.client(serverName: "localhost"), server: server,
                                        backoff: 0.1, maxBackoff: 0.4)
        connection.start()
        var delays: [TimeInterval] = []
        while delays.count < 4 {
            let event = try await connection.waitFor(timeout: 20) { event in
                if case .disconnected = event { return true }
                return false
            }
            if case let .disconnected(_, retryIn?) = event {
                delays.append(retryIn)
            }
        }
        XCTAssertEqual(delays, [0.1, 0.2, 0.4, 0.4])
        XCTAssertFalse(connection.isConnected)
        await connection.shutdown()
        let last = try await connection.waitFor(timeout: 5) { event in
            if case .disconnected(_, .none) = event { return true }
            return false
        }
        guard case let .disconnected(reason, .none) = last else { return XCTFail("\(last)") }
        XCTAssertEqual(reason, "closed")
        // Closing twice is fine, and the completion still runs.
        await connection.shutdown()
    }

    func testEventsGoToTheClosureOnTheGivenQueue() async throws {
        let server = HushServer(host: "127.0.0.1", port: 9, serverName: "localhost", connectTimeout: 2)
        let device = try makeDevice("closure")
        let queue = DispatchQueue(label: "test.events")
        let seen = expectation(description: "a disconnected event on the given queue")
        seen.assertForOverFulfill = false
        let connection = HushConnection(client: try device.client(serverName: "localhost"), server: server,
                                        reconnect: false, callbackQueue: queue) { event in
            dispatchPrecondition(condition: .onQueue(queue))
            if case .disconnected(_, .none) = event {
                seen.fulfill()
            }
        }
        connection.start()
        await fulfillment(of: [seen], timeout: 20)
        do {
            _ = try await connection.nextEvent(timeout: 0.1)
            XCTFail("nextEvent works only without onEvent")
        } catch HushConnectionError.notWaitable {
        }
        connection.close()
    }
}
#endif
