/*
 * The Kotlin binding test (bindings/kotlin/run-tests.sh runs it): a plain
 * main, no test framework.
 *
 * Without a server: error mapping (HushException variants), a session
 * round trip between two in-memory devices, an AppStorage written in
 * Kotlin, TLS configuration checks.
 *
 * With --port (and --cert, --user, --peer-ready-file): registers a Kotlin
 * user on the server, connects with HushConnection, sends a text to the
 * Python peer (tests/python_peer.py), waits for its "pong: ..." reply and
 * confirms it; checks that a taken user id is refused, that pinning and
 * hostname verification refuse what they should, and the reconnect backoff.
 *
 * Exits 0 when every check passed, 1 on the first failure.
 */
package org.hush.connection.test

import java.io.File
import java.net.ServerSocket
import java.net.Socket
import java.nio.file.Files
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import org.hush.connection.ConnectionEvent
import org.hush.connection.EventQueue
import org.hush.connection.HushConnection
import org.hush.connection.HushConnectionException
import org.hush.connection.HushTls
import org.hush.connection.openTls
import org.hush.connection.registerAccount
import org.hush.connection.registerLinkedDevice
import org.hush.connection.waitForLink
import uniffi.hush_ffi.AppStorage
import uniffi.hush_ffi.ClientEvent
import uniffi.hush_ffi.Device
import uniffi.hush_ffi.DeviceAddress
import uniffi.hush_ffi.HushException
import uniffi.hush_ffi.MessageBody
import uniffi.hush_ffi.NewDevice
import uniffi.hush_ffi.StoreOp
import uniffi.hush_ffi.StoredRow
import uniffi.hush_ffi.TrustEvent
import uniffi.hush_ffi.generateStorageKey

// -- a tiny check helper -------------------------------------------------------

class CheckFailed(message: String) : Exception(message)

private var passed = 0

fun check(condition: Boolean, what: () -> String) {
    if (!condition) throw CheckFailed(what())
}

fun <T> checkEq(expected: T, actual: T, what: String) {
    if (expected != actual) throw CheckFailed("$what: expected <$expected>, got <$actual>")
}

/** Runs [block], which must throw an [E]; returns it. */
inline fun <reified E : Throwable> expectThrows(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw CheckFailed("$what: expected ${E::class.simpleName}, got ${e::class.qualifiedName}: ${e.message}")
    }
    throw CheckFailed("$what: expected ${E::class.simpleName}, nothing was thrown")
}

fun test(name: String, block: () -> Unit) {
    val start = System.nanoTime()
    block()
    passed++
    println("ok   $name (${(System.nanoTime() - start) / 1_000_000} ms)")
}

// -- without a server ----------------------------------------------------------

fun newDevice(user: String, id: UInt = 1u): Device = Device.createInMemory(NewDevice.forNewAccount(user), id)

/** An AppStorage over a map; a batch is applied to a copy, then swapped in (all or nothing). */
class MapStorage : AppStorage {
    private val lock = Any()
    private var rows: Map<Pair<UByte, String>, ByteArray> = emptyMap()
    var batches = 0
        private set

    private fun hex(b: ByteArray) = b.joinToString("") { "%02x".format(it) }
    private fun unhex(s: String) = ByteArray(s.length / 2) { s.substring(2 * it, 2 * it + 2).toInt(16).toByte() }

    override fun get(table: UByte, key: ByteArray): ByteArray? = synchronized(lock) { rows[table to hex(key)]?.copyOf() }

    override fun scan(table: UByte): List<StoredRow> = synchronized(lock) {
        rows.filterKeys { it.first == table }.map { (k, v) -> StoredRow(unhex(k.second), v.copyOf()) }
    }

    override fun apply(batch: List<StoreOp>) {
        synchronized(lock) {
            val next = rows.toMutableMap()
            for (op in batch) {
                when (op) {
                    is StoreOp.Put -> next[op.table to hex(op.key)] = op.value.copyOf()
                    is StoreOp.Delete -> next.remove(op.table to hex(op.key))
                }
            }
            rows = next
            batches++
        }
    }
}

/** An AppStorage whose writes fail with [error]. */
class FailingStorage(private val error: () -> Exception) : AppStorage {
    override fun get(table: UByte, key: ByteArray): ByteArray? = null
    override fun scan(table: UByte): List<StoredRow> = emptyList()
    override fun apply(batch: List<StoreOp>) = throw error()
}

fun direct(bytes: ByteArray): java.nio.ByteBuffer =
    java.nio.ByteBuffer.allocateDirect(bytes.size).put(bytes).flip() as java.nio.ByteBuffer

fun offlineTests(tmp: File) {
    test("PeerSession: the hot path with direct ByteBuffers, trust events queued") {
        val alice = newDevice("alice")
        val bob = newDevice("bob")
        alice.startSession(bob.bundle())
        val toBob = alice.session(bob.address())
        val fromAlice = bob.session(alice.address())
        checkEq("hi over a session", String(fromAlice.decrypt(direct(toBob.encrypt(direct("hi over a session".toByteArray()))))), "bob decrypts")
        check(bob.takeTrustEvents().any { it is TrustEvent.IdentityTrusted }) { "no IdentityTrusted event queued" }
        checkEq(emptyList<TrustEvent>(), bob.takeTrustEvents(), "events are taken once")
        expectThrows<IllegalArgumentException>("a heap ByteBuffer is refused") {
            toBob.encrypt(java.nio.ByteBuffer.wrap(byteArrayOf(1, 2, 3)))
        }
        bob.closeStore()
        expectThrows<HushException.AlreadyUsed>("a closed device") { bob.address() }
    }
    test("a session round trip between two in-memory devices") {
        val alice = newDevice("alice")
        val bob = newDevice("bob", 7u)
        checkEq(DeviceAddress("bob", 7u), bob.address(), "bob's address")
        alice.startSession(bob.bundle())
        check(alice.hasSession(bob.address())) { "alice has no session after startSession" }
        val first = alice.encrypt(bob.address(), "hello bob".toByteArray())
        val opened = bob.decrypt(alice.address(), first)
        checkEq("hello bob", String(opened.plaintext), "bob decrypts")
        val reply = bob.encrypt(alice.address(), "hello alice".toByteArray())
        checkEq("hello alice", String(alice.decrypt(bob.address(), reply).plaintext), "alice decrypts")
        checkEq(alice.safetyNumber("bob")?.digits, bob.safetyNumber("alice")?.digits, "safety numbers")
    }

    test("HushException.NoSession: encrypt without a session") {
        val alice = newDevice("alice")
        val e = expectThrows<HushException.NoSession>("encrypt to carol") {
            alice.encrypt(DeviceAddress("carol", 1u), byteArrayOf(1))
        }
        check(e.peer.contains("carol")) { "NoSession.peer names carol: ${e.peer}" }
    }

    test("HushException.InvalidArgument: an empty user id, a bad bundle, a short storage key") {
        expectThrows<HushException.InvalidArgument>("empty user id") { NewDevice.forNewAccount("") }
        val alice = newDevice("alice")
        val e = expectThrows<HushException.InvalidArgument>("bad bundle") { alice.startSession(byteArrayOf(1, 2, 3)) }
        check(e.reason.isNotEmpty()) { "InvalidArgument has a reason" }
        expectThrows<HushException.InvalidArgument>("short storage key") {
            Device.createSqlite(File(tmp, "short.db").path, ByteArray(5), NewDevice.forNewAccount("dave"), 1u)
        }
    }

    test("HushException.Refused: a tampered message and a replay") {
        val alice = newDevice("alice")
        val bob = newDevice("bob")
        alice.startSession(bob.bundle())
        val first = alice.encrypt(bob.address(), "one".toByteArray())
        bob.decrypt(alice.address(), first)
        expectThrows<HushException.Refused>("replayed message") { bob.decrypt(alice.address(), first) }
        val second = alice.encrypt(bob.address(), "two".toByteArray())
        val tampered = second.copyOf().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
        expectThrows<HushException.Refused>("tampered message") { bob.decrypt(alice.address(), tampered) }
        // The untampered message still opens: nothing was kept of the refused one.
        checkEq("two", String(bob.decrypt(alice.address(), second).plaintext), "after the refusal")
    }

    test("HushException.AlreadyUsed: keys given to a device twice") {
        val keys = NewDevice.forNewAccount("erin")
        Device.createInMemory(keys, 1u)
        val e = expectThrows<HushException.AlreadyUsed>("second device from the same keys") { Device.createInMemory(keys, 2u) }
        check(e.what.isNotEmpty()) { "AlreadyUsed names what" }
        expectThrows<HushException.AlreadyUsed>("user() after use") { keys.user() }
    }

    test("HushException.WrongStorageKey: reopening a sqlite store with another key") {
        val path = File(tmp, "frank.db").path
        val key = generateStorageKey()
        checkEq(32, key.size, "storage key length")
        val address = Device.createSqlite(path, key, NewDevice.forNewAccount("frank"), 3u).use { it.address() }
        expectThrows<HushException.WrongStorageKey>("another key") { Device.openSqlite(path, generateStorageKey()) }
        Device.openSqlite(path, key).use { checkEq(address, it.address(), "reopened with the right key") }
        expectThrows<HushException.NoAccount>("an empty store") {
            Device.openSqlite(File(tmp, "empty.db").path, key)
        }
    }

    test("AppStorage in Kotlin: create, reopen, converse") {
        val storage = MapStorage()
        val key = generateStorageKey()
        val created = Device.createWithStorage(storage, key, NewDevice.forNewAccount("gina"), 4u)
        val address = created.address()
        val identity = created.identityKey()
        val bob = newDevice("bob")
        bob.startSession(created.bundle())
        created.decrypt(bob.address(), bob.encrypt(address, "over app storage".toByteArray()))
        created.close()
        check(storage.batches > 0) { "the SDK wrote batches to the app's storage" }
        Device.openWithStorage(storage, key).use { reopened ->
            checkEq(address, reopened.address(), "reopened address")
            check(identity.contentEquals(reopened.identityKey())) { "reopened identity key" }
            check(reopened.hasSession(bob.address())) { "the session survived in app storage" }
            val reply = reopened.encrypt(bob.address(), "still here".toByteArray())
            checkEq("still here", String(bob.decrypt(address, reply).plaintext), "bob decrypts the reply")
        }
        expectThrows<HushException.WrongStorageKey>("app storage, another key") {
            Device.openWithStorage(storage, generateStorageKey())
        }
        expectThrows<HushException.NoAccount>("empty app storage") { Device.openWithStorage(MapStorage(), key) }
    }

    test("AppStorage errors: HushException.Storage from Kotlin comes back unchanged, others are wrapped") {
        val own = expectThrows<HushException.Storage>("storage raising HushException.Storage") {
            Device.createWithStorage(FailingStorage { HushException.Storage("disk full") }, generateStorageKey(),
                NewDevice.forNewAccount("hank"), 1u)
        }
        checkEq("disk full", own.reason, "the app's reason")
        val other = expectThrows<HushException.Storage>("storage raising IllegalStateException") {
            Device.createWithStorage(FailingStorage { IllegalStateException("boom") }, generateStorageKey(),
                NewDevice.forNewAccount("ivan"), 1u)
        }
        check(other.reason.isNotEmpty()) { "a wrapped storage error has a reason" }
    }

    test("HushException.Protocol: a broken byte stream; InvalidArgument: a bad server name") {
        val device = newDevice("judy")
        expectThrows<HushException.InvalidArgument>("server name with a space") { device.client("not a name") }
        val client = device.client("localhost")
        client.handleConnected()
        expectThrows<HushException.Protocol>("garbage from the server") { client.handleInput(ByteArray(64) { 0xff.toByte() }) }
    }

    test("HushTls refuses a malformed pin and PEM") {
        expectThrows<IllegalArgumentException>("short pin") { HushTls.pinned("abcd") }
        expectThrows<Exception>("not PEM") { HushTls.trusting("not a certificate") }
    }
}

// -- with a server -------------------------------------------------------------

class Live(
    val host: String,
    val port: Int,
    val serverName: String,
    val certPem: String,
    val user: String,
    val readyFile: File,
    val peerTimeoutMillis: Long,
)

fun freePort(): Int = ServerSocket(0).use { it.localPort }

/** A TCP relay to the server whose connections can be cut, to test reconnecting. */
class CuttableProxy(private val host: String, private val port: Int) : AutoCloseable {
    private val listener = ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress())
    private val open = java.util.concurrent.ConcurrentLinkedQueue<Socket>()
    val localPort: Int get() = listener.localPort

    init {
        Thread({
            while (!listener.isClosed) {
                val inbound = try {
                    listener.accept()
                } catch (_: java.io.IOException) {
                    break
                }
                val outbound = try {
                    Socket(host, port)
                } catch (_: java.io.IOException) {
                    inbound.close()
                    continue
                }
                open.add(inbound)
                open.add(outbound)
                pipe(inbound, outbound)
                pipe(outbound, inbound)
            }
        }, "proxy-accept").apply { isDaemon = true }.start()
    }

    private fun pipe(from: Socket, to: Socket) {
        Thread({
            try {
                from.getInputStream().copyTo(to.getOutputStream(), 16 * 1024)
            } catch (_: java.io.IOException) {
            } finally {
                from.close()
                to.close()
            }
        }, "proxy-pipe").apply { isDaemon = true }.start()
    }

    /** Cuts every open connection (both sides see it closed). */
    fun cutAll() {
        while (true) open.poll()?.close() ?: break
    }

    override fun close() {
        listener.close()
        cutAll()
    }
}

fun liveTests(live: Live, tmp: File) {
    val tls = HushTls.trusting(live.certPem)

    test("TLS: the trusted certificate, its pin, and refusals (wrong pin, wrong name, system store)") {
        val pin = HushTls.pinOf(live.certPem)
        openTls(live.host, live.port, live.serverName, tls).use { s ->
            checkEq("TLSv1.3", s.session.protocol, "negotiated protocol")
        }
        openTls(live.host, live.port, live.serverName, HushTls.pinned(pin)).close()
        openTls(live.host, live.port, live.serverName, HushTls.trusting(live.certPem, pin.uppercase())).close()
        val e = expectThrows<HushConnectionException>("wrong pin") {
            openTls(live.host, live.port, live.serverName, HushTls.pinned("00".repeat(32)))
        }
        check(e.message!!.contains("does not match the pin")) { "pin message: ${e.message}" }
        expectThrows<HushConnectionException>("another server name") {
            openTls(live.host, live.port, "other.example", tls)
        }
        expectThrows<HushConnectionException>("the system trust store") {
            openTls(live.host, live.port, live.serverName, HushTls.system())
        }
    }

    test("a server refusal surfaces: registering a taken user id") {
        val taken = "${live.user}taken"
        registerAccount(NewDevice.forNewAccount(taken), live.host, live.port, live.serverName, tls)
        val e = expectThrows<HushConnectionException>("second registration of $taken") {
            registerAccount(NewDevice.forNewAccount(taken), live.host, live.port, live.serverName, tls)
        }
        check(e.message!!.contains("CONFLICT")) { "the refusal names CONFLICT: ${e.message}" }
    }

    test("reconnect with exponential backoff, and a clean close") {
        val events = EventQueue()
        val device = newDevice("${live.user}early")
        val conn = HushConnection(device.client(live.serverName), "127.0.0.1", freePort(), live.serverName, tls,
            events, initialBackoffMillis = 100, maxBackoffMillis = 400).start()
        val delays = (1..4).map {
            (events.waitFor(10_000) { it is ConnectionEvent.Disconnected } as ConnectionEvent.Disconnected).retryInMillis
        }
        checkEq(listOf<Long?>(100, 200, 400, 400), delays, "backoff delays")
        conn.close()
        val last = events.waitFor(5_000) { it is ConnectionEvent.Disconnected && it.retryInMillis == null }
        checkEq("closed", (last as ConnectionEvent.Disconnected).reason, "reason after close")
        check(!conn.isConnected) { "not connected after close" }
    }

    test("reconnects after the connection is cut, and logs in again") {
        val keys = NewDevice.forNewAccount("${live.user}re")
        val id = registerAccount(keys, live.host, live.port, live.serverName, tls)
        val device = Device.createInMemory(keys, id)
        CuttableProxy(live.host, live.port).use { proxy ->
            val events = EventQueue()
            HushConnection(device.client(live.serverName), "127.0.0.1", proxy.localPort, live.serverName, tls, events,
                initialBackoffMillis = 100, maxBackoffMillis = 1_000).use { conn ->
                conn.start()
                events.waitForEvent<ClientEvent.QueueEmpty>(30_000)
                proxy.cutAll()
                val lost = events.waitFor(10_000) { it is ConnectionEvent.Disconnected } as ConnectionEvent.Disconnected
                checkEq(100L, lost.retryInMillis, "first retry delay after a cut")
                events.waitFor(10_000) { it is ConnectionEvent.Connected }
                events.waitForEvent<ClientEvent.QueueEmpty>(30_000)
                check(conn.isConnected) { "connected again" }
            }
        }
    }

    test("link a second Kotlin device (waitForLink, requestLinkPermission, sendLink, registerLinkedDevice)") {
        val user = "${live.user}multi"
        val keys = NewDevice.forNewAccount(user)
        val firstId = registerAccount(keys, live.host, live.port, live.serverName, tls)
        val first = Device.createSqlite(File(tmp, "first.db").path, generateStorageKey(), keys, firstId)
        val events = EventQueue()
        HushConnection(first.client(live.serverName), live.host, live.port, live.serverName, tls, events).use { conn ->
            conn.start()
            events.waitForEvent<ClientEvent.QueueEmpty>(30_000)
            val code = CompletableFuture<ByteArray>()
            val linked = CompletableFuture<Pair<NewDevice, UInt>>()
            val newSide = Thread {
                try {
                    val account = waitForLink(live.host, live.port, live.serverName, tls, { code.complete(it) }, 30_000)
                    linked.complete(registerLinkedDevice(account, live.host, live.port, live.serverName, tls))
                } catch (e: Throwable) {
                    code.completeExceptionally(e)
                    linked.completeExceptionally(e)
                }
            }.apply {
                isDaemon = true
                start()
            }
            val shown = code.get(30, TimeUnit.SECONDS)
            conn.call { it.requestLinkPermission() }
            val permission = events.waitForEvent<ClientEvent.LinkPermission>(30_000).permission
            conn.call { it.sendLink(shown, permission) }
            val (newKeys, secondId) = linked.get(30, TimeUnit.SECONDS)
            newSide.join(5_000)
            check(secondId != firstId) { "the linked device has its own id ($secondId)" }
            Device.createInMemory(newKeys, secondId).use { second ->
                checkEq(DeviceAddress(user, secondId), second.address(), "linked device address")
                check(second.identityKey().contentEquals(first.identityKey())) { "the linked device shares the identity" }
            }
        }
    }

    test("converse with the Python peer through the server") {
        val keys = NewDevice.forNewAccount(live.user)
        val deviceId = registerAccount(keys, live.host, live.port, live.serverName, tls)
        val device = Device.createSqlite(File(tmp, "kotlin.db").path, generateStorageKey(), keys, deviceId)
        val events = EventQueue()
        val conn = HushConnection(device.client(live.serverName), live.host, live.port, live.serverName, tls, events,
            initialBackoffMillis = 200, maxBackoffMillis = 2_000)
        conn.start()
        try {
            events.waitFor(30_000) { it is ConnectionEvent.Connected }
            events.waitForEvent<ClientEvent.QueueEmpty>(30_000)
            check(conn.isConnected) { "connected after login" }
            // Idle across a few read timeouts of the reader thread: the TLS socket stays usable.
            Thread.sleep(2_500)
            check(conn.isConnected) { "still connected after idling" }
            // The peer writes its user id once it has logged in (it is reachable then).
            val deadline = System.currentTimeMillis() + live.peerTimeoutMillis
            while (!live.readyFile.exists()) {
                if (System.currentTimeMillis() > deadline) {
                    throw CheckFailed("the Python peer did not become ready in ${live.peerTimeoutMillis} ms " +
                        "(no ${live.readyFile})")
                }
                Thread.sleep(50)
            }
            val peer = live.readyFile.readText().trim()
            val text = "hello from kotlin"
            val messageId = conn.sendText(peer, text)
            val outcome = events.waitFor(30_000) {
                it is ConnectionEvent.Event && ((it.event is ClientEvent.Sent &&
                    (it.event as ClientEvent.Sent).messageId.contentEquals(messageId)) ||
                    it.event is ClientEvent.DeliveryFailed)
            } as ConnectionEvent.Event
            check(outcome.event is ClientEvent.Sent) { "the text to $peer was not delivered: ${outcome.event}" }
            checkEq(peer, (outcome.event as ClientEvent.Sent).recipient, "Sent.recipient")
            val reply = events.waitForEvent<ClientEvent.Message>(live.peerTimeoutMillis) { it.sender.user == peer }
            val body = reply.content.body
            check(body is MessageBody.Text) { "the reply is text: $body" }
            checkEq("pong: $text", (body as MessageBody.Text).text, "the Python peer's reply")
            conn.confirm(reply.envelopeId)
            check(device.safetyNumber(peer) != null) { "a safety number with the peer" }
        } finally {
            conn.close()
        }
        check(!conn.isConnected) { "not connected after close" }
        // The confirmation was written before the close: a new connection gets nothing more.
        val again = EventQueue()
        HushConnection(device.client(live.serverName), live.host, live.port, live.serverName, tls, again).use { c ->
            c.start()
            val next = again.waitFor(30_000) {
                it is ConnectionEvent.Event && (it.event is ClientEvent.QueueEmpty || it.event is ClientEvent.Message)
            } as ConnectionEvent.Event
            check(next.event is ClientEvent.QueueEmpty) { "the confirmed reply came back: ${next.event}" }
        }
    }
}

// -- main ----------------------------------------------------------------------

fun arg(args: Array<String>, name: String, env: String): String? {
    val i = args.indexOf(name)
    if (i >= 0) {
        if (i + 1 >= args.size) throw IllegalArgumentException("$name needs a value")
        return args[i + 1]
    }
    return System.getenv(env)?.takeIf { it.isNotEmpty() }
}

fun main(args: Array<String>) {
    val tmp = Files.createTempDirectory("hush-kotlin-test-").toFile()
    val started = System.nanoTime()
    try {
        offlineTests(tmp)
        val port = arg(args, "--port", "HUSH_TEST_PORT")
        if (port == null) {
            println("live tests not run: no --port / HUSH_TEST_PORT (run-tests.sh passes one)")
            if (System.getenv("HUSH_REQUIRE_LIVE") == "1") throw CheckFailed("HUSH_REQUIRE_LIVE=1 but no server given")
        } else {
            fun need(name: String, env: String) =
                arg(args, name, env) ?: throw IllegalArgumentException("$name (or $env) is required with --port")
            val live = Live(
                host = arg(args, "--host", "HUSH_TEST_HOST") ?: "127.0.0.1",
                port = port.toInt(),
                serverName = arg(args, "--server-name", "HUSH_TEST_SERVER_NAME") ?: "localhost",
                certPem = File(need("--cert", "HUSH_TEST_CERT")).readText(),
                user = need("--user", "HUSH_TEST_USER"),
                readyFile = File(need("--peer-ready-file", "HUSH_TEST_PEER_READY")),
                peerTimeoutMillis = (arg(args, "--peer-timeout-ms", "HUSH_TEST_PEER_TIMEOUT_MS") ?: "60000").toLong(),
            )
            liveTests(live, tmp)
        }
    } catch (e: Throwable) {
        System.err.println("FAILED: ${e::class.simpleName}: ${e.message}")
        if (e !is CheckFailed) e.printStackTrace()
        tmp.deleteRecursively()
        exitProcess(1)
    }
    tmp.deleteRecursively()
    println("all $passed Kotlin checks passed (${(System.nanoTime() - started) / 1_000_000} ms)")
    exitProcess(0)
}
