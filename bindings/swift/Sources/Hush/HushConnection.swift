// A ready TLS connection for the Hush sans-IO client, over Network.framework.
//
// The Rust core never touches the network: a `Client` takes the bytes read
// from the server and hands back the bytes to write. This file owns the
// connection so that an app does not have to (it mirrors the Python helper,
// bindings/python/python/hush/connection.py):
//
// * `HushConnection` keeps a `Client` connected: a serial queue owns the
//   `NWConnection`, feeds what it reads to the client, writes what the
//   client transmits, runs the client's timers, delivers events to a closure
//   on a queue of the app's choice (or buffers them for `waitFor`),
//   reconnects with exponential backoff and shuts down cleanly;
// * `registerAccount`, `waitForLink` and `registerLinkedDevice` run the
//   one-shot registration connections (async/await);
// * `HushTLS` pins the server: trust exactly one certificate or private CA
//   (self-hosted servers with their own certificate), and/or require the
//   SHA-256 of the server certificate's DER.
//
// TLS 1.3 is the minimum. Network.framework exists on Apple platforms only;
// elsewhere (Linux `swift test`) this file compiles to nothing and only the
// generated core API is available.

#if canImport(Network)
import CryptoKit
import Foundation
import Network
import Security

// MARK: - Errors

/// Why a connection or a registration failed.
public enum HushConnectionError: Error, Equatable, LocalizedError {
    /// The server could not be reached, or the TCP or TLS handshake failed
    /// (including a certificate that is not trusted or does not match the pin).
    case connectFailed(String)
    /// The server refused the registration (`.conflict`: the user id is taken).
    case refused(code: ServerErrorCode, reason: String)
    /// The link message did not open (it was not sealed to this code).
    case linkRefused(String)
    /// The connection broke, or the server closed it, before the answer came.
    case closed(String)
    /// The server did not answer in time.
    case timedOut(String)
    /// A certificate or pin given to `HushTLS` is malformed.
    case invalidCertificate(String)
    /// `waitFor` was called on a connection that delivers its events to a
    /// closure, or the connection was closed while waiting.
    case notWaitable(String)

    public var errorDescription: String? {
        switch self {
        case let .connectFailed(reason): return "cannot connect: \(reason)"
        case let .refused(code, reason): return "the server refused: \(code): \(reason)"
        case let .linkRefused(reason): return "the link message was refused: \(reason)"
        case let .closed(reason): return "connection closed: \(reason)"
        case let .timedOut(reason): return "timed out: \(reason)"
        case let .invalidCertificate(reason): return "invalid certificate: \(reason)"
        case let .notWaitable(reason): return reason
        }
    }
}

// MARK: - TLS trust

/// How the server's certificate is checked.
///
/// * Neither anchors nor a pin: the system trust store, for the server name
///   (a server with a public certificate).
/// * `anchors` (DER): trust exactly these certificates or CAs, for the server
///   name: the development certificate `hush-server` writes
///   (`dev-cert.pem`), or a self-hosted server's private CA.
/// * `pinSHA256` (the SHA-256 of the server certificate's DER, 32 bytes):
///   the leaf must match it; given alone it is the only check (a pin is
///   stronger than a CA). With anchors, both must pass.
public struct HushTLS: Sendable, Equatable {
    /// DER certificates trusted as the only anchors.
    public var anchors: [Data]
    /// SHA-256 of the server certificate's DER.
    public var pinSHA256: Data?

    public init(anchors: [Data] = [], pinSHA256: Data? = nil) {
        self.anchors = anchors
        self.pinSHA256 = pinSHA256
    }

    /// The system trust store.
    public static let system = HushTLS()

    /// Trusts the certificates of a PEM file (one certificate or a CA chain).
    public static func trusting(pemFile path: String, pinSHA256Hex: String? = nil) throws -> HushTLS {
        let pem: String
        do {
            pem = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw HushConnectionError.invalidCertificate("cannot read \(path): \(error)")
        }
        return try trusting(pem: pem, pinSHA256Hex: pinSHA256Hex)
    }

    /// Trusts the certificates of PEM text.
    public static func trusting(pem: String, pinSHA256Hex: String? = nil) throws -> HushTLS {
        let pin = try pinSHA256Hex.map(parsePin)
        return HushTLS(anchors: try derCertificates(fromPEM: pem), pinSHA256: pin)
    }

    /// Trusts only a certificate whose DER has this SHA-256 (hex, colons
    /// allowed).
    public static func pinned(sha256Hex: String) throws -> HushTLS {
        HushTLS(anchors: [], pinSHA256: try parsePin(sha256Hex))
    }

    /// The DER of every `CERTIFICATE` block of PEM text.
    public static func derCertificates(fromPEM pem: String) throws -> [Data] {
        var result: [Data] = []
        var body: String?
        for rawLine in pem.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line == "-----BEGIN CERTIFICATE-----" {
                body = ""
            } else if line == "-----END CERTIFICATE-----" {
                guard let text = body, let der = Data(base64Encoded: text) else {
                    throw HushConnectionError.invalidCertificate("a PEM block is not base64")
                }
                guard SecCertificateCreateWithData(nil, der as CFData) != nil else {
                    throw HushConnectionError.invalidCertificate("a PEM block is not an X.509 certificate")
                }
                result.append(der)
                body = nil
            } else if body != nil {
                body! += line
            }
        }
        if result.isEmpty {
            throw HushConnectionError.invalidCertificate("no CERTIFICATE block in the PEM text")
        }
        return result
    }

    /// Lowercase hex of the SHA-256 of `der` (what a pin is).
    public static func sha256Hex(of der: Data) -> String {
        hex(Data(SHA256.hash(data: der)))
    }

    static func parsePin(_ text: String) throws -> Data {
        let clean = text.lowercased().replacingOccurrences(of: ":", with: "")
        guard clean.count == 64 else {
            throw HushConnectionError.invalidCertificate("a SHA-256 pin is 64 hex digits")
        }
        var bytes = Data(capacity: 32)
        var index = clean.startIndex
        while index < clean.endIndex {
            let next = clean.index(index, offsetBy: 2)
            guard let byte = UInt8(clean[index..<next], radix: 16) else {
                throw HushConnectionError.invalidCertificate("the pin is not hex")
            }
            bytes.append(byte)
            index = next
        }
        return bytes
    }

    static func hex(_ data: Data) -> String {
        data.map { String(format: "%02x", $0) }.joined()
    }

    /// Checks the server's trust object; returns why it is refused, or nil.
    func evaluate(_ trust: SecTrust, serverName: String) -> String? {
        if !anchors.isEmpty || pinSHA256 == nil {
            SecTrustSetPolicies(trust, SecPolicyCreateSSL(true, serverName as CFString))
            if !anchors.isEmpty {
                let certificates = anchors.compactMap { SecCertificateCreateWithData(nil, $0 as CFData) }
                SecTrustSetAnchorCertificates(trust, certificates as CFArray)
                SecTrustSetAnchorCertificatesOnly(trust, true)
            }
            var error: CFError?
            if !SecTrustEvaluateWithError(trust, &error) {
                let why = error.map { String(describing: $0) } ?? "not trusted"
                return "the server's certificate is not trusted for \(serverName): \(why)"
            }
        }
        if let pin = pinSHA256 {
            guard let chain = SecTrustCopyCertificateChain(trust) as? [SecCertificate],
                  let leaf = chain.first
            else {
                return "the server sent no certificate"
            }
            let seen = Data(SHA256.hash(data: SecCertificateCopyData(leaf) as Data))
            if seen != pin {
                return "the server's certificate does not match the pin (it is sha256:\(HushTLS.hex(seen)))"
            }
        }
        return nil
    }
}

/// Where a Hush server is and how to check it.
public struct HushServer: Sendable, Equatable {
    /// Host name or IP address to dial.
    public var host: String
    /// TCP port.
    public var port: UInt16
    /// The name in the server's certificate, which the protocol also binds
    /// (pass the same to `Device.client(serverName:)`).
    public var serverName: String
    /// How the certificate is checked.
    public var tls: HushTLS
    /// How long the TCP and TLS handshakes may take, in seconds.
    public var connectTimeout: TimeInterval

    public init(host: String, port: UInt16, serverName: String, tls: HushTLS = .system,
                connectTimeout: TimeInterval = 10) {
        self.host = host
        self.port = port
        self.serverName = serverName
        self.tls = tls
        self.connectTimeout = connectTimeout
    }

    /// From `host:port` (an IPv6 literal in brackets: `[::1]:7443`).
    public init(address: String, serverName: String, tls: HushTLS = .system,
                connectTimeout: TimeInterval = 10) throws {
        guard let colon = address.lastIndex(of: ":"),
              let port = UInt16(address[address.index(after: colon)...])
        else {
            throw HushConnectionError.connectFailed("\(address) is not host:port")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        self.init(host: host, port: port, serverName: serverName, tls: tls,
                  connectTimeout: connectTimeout)
    }

    var description: String { "\(host):\(port)" }

    /// Network.framework parameters: TCP without Nagle, TLS 1.3 at least, SNI
    /// and certificate check for `serverName`, and the pin. `rejected` is
    /// called (on `queue`) with the reason when the certificate is refused.
    func parameters(queue: DispatchQueue, rejected: @escaping (String) -> Void) -> NWParameters {
        let tlsOptions = NWProtocolTLS.Options()
        let sec = tlsOptions.securityProtocolOptions
        sec_protocol_options_set_min_tls_protocol_version(sec, .TLSv13)
        sec_protocol_options_set_tls_server_name(sec, serverName)
        if !tls.anchors.isEmpty || tls.pinSHA256 != nil {
            let check = tls
            let name = serverName
            sec_protocol_options_set_verify_block(sec, { _, secTrust, complete in
                let trust = sec_trust_copy_ref(secTrust).takeRetainedValue()
                if let reason = check.evaluate(trust, serverName: name) {
                    rejected(reason)
                    complete(false)
                } else {
                    complete(true)
                }
            }, queue)
        }
        // Otherwise Network.framework checks against the system trust store
        // for the server name set above.
        let tcpOptions = NWProtocolTCP.Options()
        tcpOptions.noDelay = true
        tcpOptions.connectionTimeout = max(1, Int(connectTimeout.rounded(.up)))
        return NWParameters(tls: tlsOptions, tcp: tcpOptions)
    }

    func makeConnection(queue: DispatchQueue, rejected: @escaping (String) -> Void) -> NWConnection? {
        guard let nwPort = NWEndpoint.Port(rawValue: port) else { return nil }
        return NWConnection(host: NWEndpoint.Host(host), port: nwPort,
                            using: parameters(queue: queue, rejected: rejected))
    }
}

private let readSize = 64 * 1024

// MARK: - Registration

/// One unauthenticated connection driving a `Registration`.
final class RegistrationChannel: @unchecked Sendable {
    private let registration: Registration
    private let server: HushServer
    // Owns every field below; Network.framework calls back on it too.
    private let queue = DispatchQueue(label: "org.hush.registration")
    private var connection: NWConnection?
    private var ready = false
    private var failure: HushConnectionError?
    private var rejectedReason: String?
    private var waiter: Waiter?

    private struct Waiter {
        let wanted: (RegistrationEvent) -> Bool
        let continuation: CheckedContinuation<RegistrationEvent, Error>
        let timeout: DispatchWorkItem
    }

    init(registration: Registration, server: HushServer) {
        self.registration = registration
        self.server = server
    }

    func open() {
        queue.async { self.connect() }
    }

    func close() {
        queue.async {
            self.fail(.closed("closed"))
            self.connection?.stateUpdateHandler = nil
            self.connection?.cancel()
            self.connection = nil
        }
    }

    /// Drives the registration until an event `wanted` accepts (returned),
    /// a refusal, a broken connection or `timeout` seconds (thrown). Events
    /// before the wanted one are dropped.
    func next(timeout: TimeInterval,
              wanted: @escaping (RegistrationEvent) -> Bool) async throws -> RegistrationEvent {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                if let failure = self.failure {
                    continuation.resume(throwing: failure)
                    return
                }
                let timer = DispatchWorkItem { [weak self] in
                    self?.finish(.failure(.timedOut("the server did not answer in time")))
                }
                self.waiter = Waiter(wanted: wanted, continuation: continuation, timeout: timer)
                self.queue.asyncAfter(deadline: .now() + timeout, execute: timer)
                self.pump()
            }
        }
    }

    private func connect() {
        guard let connection = server.makeConnection(queue: queue, rejected: { [weak self] reason in
            self?.rejectedReason = reason
        }) else {
            fail(.connectFailed("invalid port \(server.port)"))
            return
        }
        self.connection = connection
        connection.stateUpdateHandler = { [weak self] state in
            guard let self = self else { return }
            switch state {
            case .ready:
                self.ready = true
                self.receive(on: connection)
                self.pump()
            case let .waiting(error), let .failed(error):
                let reason = self.rejectedReason ?? "\(self.server.description) as \(self.server.serverName): \(error)"
                self.fail(self.ready ? .closed(reason) : .connectFailed(reason))
            default:
                break
            }
        }
        connection.start(queue: queue)
        queue.asyncAfter(deadline: .now() + server.connectTimeout) { [weak self] in
            guard let self = self, !self.ready, self.connection === connection else { return }
            self.fail(.connectFailed("\(self.server.description): no TLS connection after \(self.server.connectTimeout) s"))
        }
    }

    private func receive(on connection: NWConnection) {
        connection.receive(minimumIncompleteLength: 1, maximumLength: readSize) { [weak self] data, _, isComplete, error in
            guard let self = self, self.connection === connection, self.failure == nil else { return }
            if let data = data, !data.isEmpty {
                do {
                    try self.registration.handleInput(data: data)
                } catch {
                    self.fail(.closed("protocol error: \(error)"))
                    return
                }
                self.pump()
            }
            if isComplete {
                self.fail(.closed("the server closed the connection"))
            } else if let error = error {
                self.fail(.closed("read failed: \(error)"))
            } else {
                self.receive(on: connection)
            }
        }
    }

    /// Writes what the registration transmits; hands events to the waiter.
    private func pump() {
        guard ready, failure == nil, let connection = connection else { return }
        do {
            let out = try registration.takeTransmit()
            if !out.isEmpty {
                connection.send(content: out, completion: .contentProcessed { [weak self] error in
                    if let error = error {
                        self?.fail(.closed("write failed: \(error)"))
                    }
                })
            }
            guard let waiter = waiter else { return }
            while let event = try registration.pollEvent() {
                if waiter.wanted(event) {
                    finish(.success(event))
                    return
                }
                switch event {
                case let .refused(code, reason):
                    finish(.failure(.refused(code: code, reason: reason)))
                    return
                case let .linkRefused(reason):
                    finish(.failure(.linkRefused(reason)))
                    return
                default:
                    continue
                }
            }
        } catch {
            fail(.closed("registration failed: \(error)"))
        }
    }

    private func finish(_ result: Result<RegistrationEvent, HushConnectionError>) {
        guard let waiter = waiter else { return }
        self.waiter = nil
        waiter.timeout.cancel()
        switch result {
        case let .success(event): waiter.continuation.resume(returning: event)
        case let .failure(error): waiter.continuation.resume(throwing: error)
        }
    }

    private func fail(_ error: HushConnectionError) {
        if failure == nil {
            failure = error
        }
        finish(.failure(failure ?? error))
        connection?.cancel()
    }
}

/// Registers `newDevice` (from `NewDevice.forNewAccount`) and returns the
/// device id the server gave; then create the `Device` with it
/// (`Device.createSqlite(path:storageKey:newDevice:deviceId:)`).
///
/// Throws `HushConnectionError.refused(code: .conflict, ...)` when the user
/// id is taken.
public func registerAccount(_ newDevice: NewDevice, server: HushServer,
                            timeout: TimeInterval = 30) async throws -> UInt32 {
    let registration = try newDevice.registration(serverName: server.serverName)
    let channel = RegistrationChannel(registration: registration, server: server)
    channel.open()
    defer { channel.close() }
    let event = try await channel.next(timeout: timeout) { event in
        if case .registered = event { return true }
        return false
    }
    guard case let .registered(deviceId) = event else {
        throw HushConnectionError.closed("unexpected registration event")
    }
    return deviceId
}

/// As a new device: asks the server for a provisioning address, calls
/// `onCode` with the link code to show (a QR code, or hex text that
/// `hush-cli approve` takes), and waits up to `timeout` seconds for an
/// existing device to send the account (`Client.sendLink`). Then call
/// `registerLinkedDevice`.
public func waitForLink(server: HushServer, timeout: TimeInterval = 600,
                        onCode: @escaping (Data) -> Void) async throws -> LinkedAccount {
    let registration = try Registration.provisioning(serverName: server.serverName)
    let channel = RegistrationChannel(registration: registration, server: server)
    channel.open()
    defer { channel.close() }
    let shown = try await channel.next(timeout: 30) { event in
        if case .showCode = event { return true }
        return false
    }
    guard case let .showCode(code) = shown else {
        throw HushConnectionError.closed("unexpected registration event")
    }
    onCode(code)
    let linked = try await channel.next(timeout: timeout) { event in
        if case .linked = event { return true }
        return false
    }
    guard case let .linked(account) = linked else {
        throw HushConnectionError.closed("unexpected registration event")
    }
    return account
}

/// Registers a device of the linked `account`; returns its keys and device
/// id, to create the `Device` with.
public func registerLinkedDevice(_ account: LinkedAccount, server: HushServer,
                                 timeout: TimeInterval = 30) async throws -> (NewDevice, UInt32) {
    let newDevice = try NewDevice.forLinkedAccount(account: account)
    let deviceId = try await registerAccount(newDevice, server: server, timeout: timeout)
    return (newDevice, deviceId)
}

// MARK: - The connection

/// Keeps a `Client` connected to its server.
///
/// A private serial queue owns the `NWConnection`: it feeds what it reads to
/// the client, writes what the client transmits, runs the client's timers,
/// and hands every event to `onEvent` on `callbackQueue` or, when no
/// closure is given, buffers it for `waitFor` / `nextEvent`. After a failure
/// it reconnects, waiting `backoff` seconds, doubled on each failure up to
/// `maxBackoff`; `.connected` and `.disconnected` are among the events.
///
/// The client is thread-safe: call `connection.client.sendText(...)` from
/// any thread, then `wake()` so the queue writes it out; `sendText`,
/// `confirm` and `call` do both.
///
/// ```swift
/// let server = HushServer(host: "chat.example.org", port: 7443, serverName: "chat.example.org",
///                         tls: try .trusting(pemFile: "server.pem"))
/// let connection = HushConnection(client: try device.client(serverName: server.serverName),
///                                 server: server)
/// connection.start()
/// _ = try connection.sendText(recipient: "bob", text: "hello")
/// let sent = try await connection.waitFor { if case .client(.sent) = $0 { return true }; return false }
/// connection.close()
/// ```
public final class HushConnection: @unchecked Sendable {
    /// What the connection reports.
    public enum Event {
        /// A connection (or reconnection) is up and the client was told.
        case connected
        /// The connection is lost; `retryIn` is the delay before the next
        /// attempt, or nil when it was closed for good.
        case disconnected(reason: String, retryIn: TimeInterval?)
        /// An event of the client.
        case client(ClientEvent)
    }

    /// The client this connection drives.
    public let client: Client
    /// The server.
    public let server: HushServer
    /// Whether to reconnect after a failure.
    public let reconnect: Bool
    /// The first delay before reconnecting, in seconds.
    public let backoff: TimeInterval
    /// The longest delay before reconnecting.
    public let maxBackoff: TimeInterval

    private let queue = DispatchQueue(label: "org.hush.connection")
    private let callbackQueue: DispatchQueue
    private let onEvent: ((Event) -> Void)?
    private let buffer = EventBuffer()

    // Owned by `queue`.
    private var connection: NWConnection?
    private var ready = false
    private var started = false
    private var closing = false
    private var finished = false
    private var delay: TimeInterval
    private var rejectedReason: String?
    private var timer: DispatchSourceTimer?
    private var retry: DispatchWorkItem?
    private var closeCompletion: [() -> Void] = []

    private let connectedLock = NSLock()
    private var connectedFlag = false

    /// - Parameters:
    ///   - client: from `Device.client(serverName:)`, with the same server name.
    ///   - server: where to connect and how to check the certificate.
    ///   - reconnect: reconnect after a failure (default true).
    ///   - backoff: first delay before reconnecting (seconds).
    ///   - maxBackoff: longest delay.
    ///   - callbackQueue: where `onEvent` is called (default: main).
    ///   - onEvent: receives every event; when nil, events are buffered for
    ///     `waitFor` / `nextEvent`.
    public init(client: Client, server: HushServer, reconnect: Bool = true,
                backoff: TimeInterval = 0.5, maxBackoff: TimeInterval = 30,
                callbackQueue: DispatchQueue = .main, onEvent: ((Event) -> Void)? = nil) {
        self.client = client
        self.server = server
        self.reconnect = reconnect
        self.backoff = backoff
        self.maxBackoff = max(maxBackoff, backoff)
        self.callbackQueue = callbackQueue
        self.onEvent = onEvent
        self.delay = backoff
    }

    deinit {
        timer?.cancel()
        retry?.cancel()
        connection?.cancel()
    }

    // MARK: Lifecycle

    /// Connects, then keeps connected until `close()`.
    public func start() {
        queue.async {
            guard !self.started, !self.closing else { return }
            self.started = true
            self.connect()
        }
    }

    /// Closes the connection for good: what the client has queued (acks, for
    /// instance) is written out first (for up to 2 seconds), then the
    /// connection is cancelled and `.disconnected(reason: "closed",
    /// retryIn: nil)` is the last event. Messages not yet stored by the
    /// server stay with the client and are sent on the next connection.
    /// `completion` runs on `callbackQueue` when it is done.
    public func close(completion: (() -> Void)? = nil) {
        queue.async {
            if let completion = completion {
                self.closeCompletion.append(completion)
            }
            if self.finished {
                self.runCloseCompletions()
                return
            }
            if self.closing { return }
            self.closing = true
            self.retry?.cancel()
            self.retry = nil
            self.timer?.cancel()
            self.timer = nil
            guard let connection = self.connection, self.ready else {
                self.endForGood(reason: "closed")
                return
            }
            // Flush, then cancel; cancel anyway if the flush hangs.
            var out = Data()
            if let bytes = try? self.client.takeTransmit() {
                out = bytes
            }
            let done = DispatchWorkItem { [weak self] in
                guard let self = self, !self.finished else { return }
                connection.cancel()
                self.endForGood(reason: "closed")
            }
            if out.isEmpty {
                self.queue.async(execute: done)
            } else {
                connection.send(content: out, completion: .contentProcessed { _ in
                    done.perform()
                })
                self.queue.asyncAfter(deadline: .now() + 2, execute: done)
            }
        }
    }

    /// Closes and waits until the connection is down.
    public func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            close { continuation.resume() }
        }
    }

    /// Whether a TLS connection is up right now.
    public var isConnected: Bool {
        connectedLock.lock()
        defer { connectedLock.unlock() }
        return connectedFlag
    }

    /// Tells the queue the client has something to send.
    public func wake() {
        queue.async { self.pump() }
    }

    // MARK: Conveniences

    /// Sends text; returns the message id (`.sent` follows).
    @discardableResult
    public func sendText(recipient: String, text: String) throws -> Data {
        let id = try client.sendText(recipient: recipient, text: text)
        wake()
        return id
    }

    /// Confirms a kept message (the server may drop it).
    public func confirm(envelopeId: Data) throws {
        try client.confirm(envelopeId: envelopeId)
        wake()
    }

    /// Runs `body(client)` and wakes the queue to write what it queued.
    @discardableResult
    public func call<T>(_ body: (Client) throws -> T) rethrows -> T {
        let result = try body(client)
        wake()
        return result
    }

    /// The next buffered event, or nil after `timeout` seconds. Only
    /// without `onEvent`.
    public func nextEvent(timeout: TimeInterval) async throws -> Event? {
        guard onEvent == nil else {
            throw HushConnectionError.notWaitable("this connection delivers its events to onEvent")
        }
        return await buffer.next(timeout: timeout)
    }

    /// Takes buffered events until one matches; the others are dropped.
    /// Throws `HushConnectionError.timedOut`. Only without `onEvent`.
    public func waitFor(timeout: TimeInterval = 30,
                        _ predicate: (Event) -> Bool) async throws -> Event {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                throw HushConnectionError.timedOut("no matching event in time")
            }
            guard let event = try await nextEvent(timeout: left) else {
                if buffer.isFinished {
                    throw HushConnectionError.closed("the connection was closed")
                }
                continue
            }
            if predicate(event) {
                return event
            }
        }
    }

    // MARK: On the queue

    private func setConnected(_ value: Bool) {
        connectedLock.lock()
        connectedFlag = value
        connectedLock.unlock()
    }

    private func emit(_ event: Event) {
        if let onEvent = onEvent {
            callbackQueue.async { onEvent(event) }
        } else {
            buffer.push(event)
        }
    }

    private func connect() {
        rejectedReason = nil
        guard let connection = server.makeConnection(queue: queue, rejected: { [weak self] reason in
            self?.rejectedReason = reason
        }) else {
            ended(nil, reason: "invalid port \(server.port)")
            return
        }
        self.connection = connection
        connection.stateUpdateHandler = { [weak self] state in
            guard let self = self, self.connection === connection else { return }
            switch state {
            case .ready:
                self.connectionReady(connection)
            case let .waiting(error), let .failed(error):
                let reason: String
                if let rejected = self.rejectedReason {
                    reason = rejected
                } else if self.ready {
                    reason = "connection lost: \(error)"
                } else {
                    reason = "cannot connect to \(self.server.description) as \(self.server.serverName): \(error)"
                }
                self.ended(connection, reason: reason)
            default:
                break
            }
        }
        connection.start(queue: queue)
        queue.asyncAfter(deadline: .now() + server.connectTimeout) { [weak self] in
            guard let self = self, self.connection === connection, !self.ready else { return }
            self.ended(connection, reason: "no TLS connection to \(self.server.description) after \(self.server.connectTimeout) s")
        }
    }

    private func connectionReady(_ connection: NWConnection) {
        if closing {
            connection.cancel()
            endForGood(reason: "closed")
            return
        }
        ready = true
        delay = backoff
        do {
            try client.handleConnected()
        } catch {
            ended(connection, reason: "the client failed: \(error)")
            return
        }
        setConnected(true)
        emit(.connected)
        receive(on: connection)
        pump()
    }

    private func receive(on connection: NWConnection) {
        connection.receive(minimumIncompleteLength: 1, maximumLength: readSize) { [weak self] data, _, isComplete, error in
            guard let self = self, self.connection === connection, self.ready else { return }
            if let data = data, !data.isEmpty {
                do {
                    try self.client.handleInput(data: data)
                } catch {
                    // HushError.Protocol: the stream is broken; reconnect.
                    self.ended(connection, reason: "protocol error: \(error)")
                    return
                }
                self.pump()
            }
            if isComplete {
                self.ended(connection, reason: "the server closed the connection")
            } else if let error = error {
                self.ended(connection, reason: "read failed: \(error)")
            } else {
                self.receive(on: connection)
            }
        }
    }

    /// Writes what the client transmits, delivers its events, and sets the
    /// timer for its next deadline.
    private func pump() {
        guard ready, !closing, let connection = connection else { return }
        do {
            let out = try client.takeTransmit()
            if !out.isEmpty {
                connection.send(content: out, completion: .contentProcessed { [weak self] error in
                    guard let self = self, let error = error, self.connection === connection else { return }
                    self.ended(connection, reason: "write failed: \(error)")
                })
            }
            while let event = try client.pollEvent() {
                emit(.client(event))
            }
            scheduleTimer(try client.timeoutMillis())
        } catch {
            ended(connection, reason: "the client failed: \(error)")
        }
    }

    /// Wakes at the client's deadline, and at least every second.
    private func scheduleTimer(_ millis: UInt64?) {
        let wait = Int(min(millis ?? 1000, 1000))
        if timer == nil {
            let source = DispatchSource.makeTimerSource(queue: queue)
            source.setEventHandler { [weak self] in self?.tick() }
            source.schedule(deadline: .now() + .milliseconds(wait))
            source.resume()
            timer = source
        } else {
            timer?.schedule(deadline: .now() + .milliseconds(wait))
        }
    }

    private func tick() {
        guard ready, !closing, let connection = connection else { return }
        do {
            if let due = try client.timeoutMillis(), due == 0 {
                try client.handleTimeout()
            }
        } catch {
            ended(connection, reason: "the client failed: \(error)")
            return
        }
        pump()
    }

    /// One connection ended (or failed to start): reconnect later, or stop.
    private func ended(_ connection: NWConnection?, reason: String) {
        if let connection = connection {
            guard self.connection === connection else { return }
            connection.stateUpdateHandler = nil
            connection.cancel()
        }
        self.connection = nil
        ready = false
        setConnected(false)
        timer?.cancel()
        timer = nil
        if closing || !reconnect {
            endForGood(reason: closing ? "closed" : reason)
            return
        }
        let wait = delay
        delay = min(delay * 2, maxBackoff)
        emit(.disconnected(reason: reason, retryIn: wait))
        let work = DispatchWorkItem { [weak self] in
            guard let self = self, !self.closing else { return }
            self.retry = nil
            self.connect()
        }
        retry = work
        queue.asyncAfter(deadline: .now() + wait, execute: work)
    }

    private func endForGood(reason: String) {
        guard !finished else {
            runCloseCompletions()
            return
        }
        finished = true
        closing = true
        if let connection = connection {
            connection.stateUpdateHandler = nil
            connection.cancel()
        }
        connection = nil
        ready = false
        setConnected(false)
        timer?.cancel()
        timer = nil
        retry?.cancel()
        retry = nil
        emit(.disconnected(reason: reason, retryIn: nil))
        buffer.finish()
        runCloseCompletions()
    }

    private func runCloseCompletions() {
        let completions = closeCompletion
        closeCompletion = []
        for completion in completions {
            callbackQueue.async(execute: completion)
        }
    }
}

/// Events waiting for `waitFor`: a FIFO with one async reader at a time.
private final class EventBuffer: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [HushConnection.Event] = []
    private var waiter: (id: UInt64, continuation: CheckedContinuation<HushConnection.Event?, Never>)?
    private var nextId: UInt64 = 0
    private var done = false

    func push(_ event: HushConnection.Event) {
        lock.lock()
        if let waiter = waiter {
            self.waiter = nil
            lock.unlock()
            waiter.continuation.resume(returning: event)
            return
        }
        items.append(event)
        lock.unlock()
    }

    /// Whether `finish` was called and every event was taken.
    var isFinished: Bool {
        lock.lock()
        defer { lock.unlock() }
        return done && items.isEmpty
    }

    /// No more events will come: a waiter (now or later, once the buffer is
    /// empty) gets nil at once.
    func finish() {
        lock.lock()
        done = true
        let waiting = waiter
        waiter = nil
        lock.unlock()
        waiting?.continuation.resume(returning: nil)
    }

    func next(timeout: TimeInterval) async -> HushConnection.Event? {
        await withCheckedContinuation { (continuation: CheckedContinuation<HushConnection.Event?, Never>) in
            lock.lock()
            if !items.isEmpty {
                let event = items.removeFirst()
                lock.unlock()
                continuation.resume(returning: event)
                return
            }
            if done {
                lock.unlock()
                continuation.resume(returning: nil)
                return
            }
            nextId += 1
            let id = nextId
            let previous = waiter
            waiter = (id, continuation)
            lock.unlock()
            // One reader at a time: an earlier one gives up.
            previous?.continuation.resume(returning: nil)
            DispatchQueue.global().asyncAfter(deadline: .now() + max(timeout, 0)) { [weak self] in
                self?.expire(id)
            }
        }
    }

    private func expire(_ id: UInt64) {
        lock.lock()
        guard let waiting = waiter, waiting.id == id else {
            lock.unlock()
            return
        }
        waiter = nil
        lock.unlock()
        waiting.continuation.resume(returning: nil)
    }
}

#endif
