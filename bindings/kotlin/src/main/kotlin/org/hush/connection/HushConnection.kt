/*
 * A ready TLS connection for the Hush sans-IO client, over the JDK's
 * SSLSocket (JVM and Android).
 *
 * The Rust core never touches the network: a `Client` takes the bytes read
 * from the server and hands back the bytes to write. This file owns the
 * socket so that an app does not have to:
 *
 *  - [HushConnection] keeps a client connected: a reader thread feeds what it
 *    reads to the client and runs the client's timers, a writer thread writes
 *    what the client transmits, events go to a [HushListener]; it reconnects
 *    with exponential backoff and closes cleanly;
 *  - [registerAccount], [waitForLink] and [registerLinkedDevice] run the
 *    one-shot registration connections;
 *  - [HushTls] pins the server: trust one PEM certificate or private CA (with
 *    hostname verification), and/or require the SHA-256 of the server
 *    certificate's DER.
 *
 * The same behaviour as the Python helper (hush.connection).
 */
package org.hush.connection

import java.io.ByteArrayInputStream
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.net.InetSocketAddress
import java.net.Socket
import java.net.SocketTimeoutException
import java.security.KeyStore
import java.security.MessageDigest
import java.security.cert.CertificateFactory
import java.security.cert.X509Certificate
import java.util.concurrent.ArrayBlockingQueue
import java.util.concurrent.CountDownLatch
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicBoolean
import javax.net.ssl.SNIHostName
import javax.net.ssl.SSLContext
import javax.net.ssl.SSLSocket
import javax.net.ssl.TrustManager
import javax.net.ssl.TrustManagerFactory
import javax.net.ssl.X509TrustManager
import uniffi.hush_ffi.Client
import uniffi.hush_ffi.ClientEvent
import uniffi.hush_ffi.HushException
import uniffi.hush_ffi.LinkedAccount
import uniffi.hush_ffi.NewDevice
import uniffi.hush_ffi.Registration
import uniffi.hush_ffi.RegistrationEvent

/** How long the TCP and TLS handshakes may take. */
const val CONNECT_TIMEOUT_MILLIS: Int = 10_000

/** How long a registration may wait for the server. */
const val REGISTRATION_TIMEOUT_MILLIS: Long = 30_000

private const val READ_SIZE = 64 * 1024

/** The server could not be reached, or refused or broke the connection. */
class HushConnectionException(message: String, cause: Throwable? = null) : IOException(message, cause)

/**
 * How to check the server: a TLS 1.3 client configuration.
 *
 *  - [HushTls.system]: the platform's trust store (a server with a public
 *    certificate);
 *  - [HushTls.trusting]: exactly the given PEM certificate(s) or CA (the
 *    development certificate `hush-server` writes, or a private CA), with
 *    hostname verification;
 *  - a `pinSha256` (hex of the SHA-256 of the server certificate's DER,
 *    colons allowed) is checked after the handshake, in addition; given
 *    alone ([HushTls.pinned]) it is the only check: the pin is stronger
 *    than a CA.
 */
class HushTls private constructor(
    internal val context: SSLContext,
    internal val verifyHostname: Boolean,
    pinSha256: String?,
) {
    /** The normalized pin (lower-case hex without colons), if any. */
    val pinSha256: String? = pinSha256?.lowercase()?.replace(":", "")

    init {
        val pin = this.pinSha256
        require(pin == null || (pin.length == 64 && pin.all { it in "0123456789abcdef" })) {
            "pinSha256 must be 64 hex digits (the SHA-256 of the certificate's DER)"
        }
    }

    companion object {
        private fun tls13(trustManagers: Array<TrustManager>?): SSLContext =
            SSLContext.getInstance("TLSv1.3").apply { init(null, trustManagers, null) }

        /** The platform's trust store, and optionally a pin on top. */
        @JvmStatic
        @JvmOverloads
        fun system(pinSha256: String? = null): HushTls = HushTls(tls13(null), true, pinSha256)

        /** Trust only the certificates of [pem] (one or more PEM blocks). */
        @JvmStatic
        @JvmOverloads
        fun trusting(pem: String, pinSha256: String? = null): HushTls {
            val certificates = CertificateFactory.getInstance("X.509")
                .generateCertificates(ByteArrayInputStream(pem.toByteArray(Charsets.US_ASCII)))
            if (certificates.isEmpty()) throw IllegalArgumentException("no certificate in the PEM text")
            val store = KeyStore.getInstance(KeyStore.getDefaultType()).apply { load(null, null) }
            certificates.forEachIndexed { i, cert -> store.setCertificateEntry("hush-trusted-$i", cert) }
            val factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm())
            factory.init(store)
            return HushTls(tls13(factory.trustManagers), true, pinSha256)
        }

        /** Only the pin is checked (no CA, no hostname): for a self-hosted server. */
        @JvmStatic
        fun pinned(pinSha256: String): HushTls = HushTls(tls13(arrayOf(AcceptAnyChain)), false, pinSha256)

        /** The SHA-256 pin (hex) of the first certificate of [pem]. */
        @JvmStatic
        fun pinOf(pem: String): String {
            val cert = CertificateFactory.getInstance("X.509")
                .generateCertificate(ByteArrayInputStream(pem.toByteArray(Charsets.US_ASCII)))
            return sha256Hex(cert.encoded)
        }
    }

    /** Accepts any chain: only with a pin, which [openTls] checks after the handshake. */
    private object AcceptAnyChain : X509TrustManager {
        override fun checkClientTrusted(chain: Array<out X509Certificate>?, authType: String?) =
            throw java.security.cert.CertificateException("not a server")

        override fun checkServerTrusted(chain: Array<out X509Certificate>?, authType: String?) {
            if (chain.isNullOrEmpty()) throw java.security.cert.CertificateException("no certificate")
        }

        override fun getAcceptedIssuers(): Array<X509Certificate> = emptyArray()
    }
}

private fun sha256Hex(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

private fun isIpLiteral(name: String): Boolean =
    name.contains(':') || name.all { it.isDigit() || it == '.' }

/**
 * A blocking TLS 1.3 connection to [host]:[port], checked for [serverName]
 * (the name in the server's certificate) as [tls] says.
 *
 * @throws HushConnectionException when it cannot connect, the handshake
 *   fails, or the pin does not match.
 */
@JvmOverloads
fun openTls(
    host: String,
    port: Int,
    serverName: String,
    tls: HushTls,
    timeoutMillis: Int = CONNECT_TIMEOUT_MILLIS,
): SSLSocket {
    val raw = Socket()
    try {
        raw.connect(InetSocketAddress(host, port), timeoutMillis)
        raw.tcpNoDelay = true
    } catch (e: IOException) {
        raw.close()
        throw HushConnectionException("cannot connect to $host:$port: $e", e)
    }
    val socket = try {
        tls.context.socketFactory.createSocket(raw, serverName, port, true) as SSLSocket
    } catch (e: IOException) {
        raw.close()
        throw HushConnectionException("TLS with $host:$port failed: $e", e)
    }
    try {
        val params = socket.sslParameters
        params.protocols = arrayOf("TLSv1.3")
        if (tls.verifyHostname) params.endpointIdentificationAlgorithm = "HTTPS"
        if (!isIpLiteral(serverName)) params.serverNames = listOf(SNIHostName(serverName))
        socket.sslParameters = params
        socket.soTimeout = timeoutMillis
        socket.startHandshake()
        checkPin(socket, tls.pinSha256)
        socket.soTimeout = 0
        return socket
    } catch (e: Exception) {
        try {
            socket.close()
        } catch (_: IOException) {
        }
        if (e is HushConnectionException) throw e
        throw HushConnectionException("TLS with $host:$port as \"$serverName\" failed: $e", e)
    }
}

private fun checkPin(socket: SSLSocket, pin: String?) {
    if (pin == null) return
    val leaf = socket.session.peerCertificates.firstOrNull()
        ?: throw HushConnectionException("the server sent no certificate")
    val seen = sha256Hex(leaf.encoded)
    if (!MessageDigest.isEqual(seen.toByteArray(), pin.toByteArray())) {
        throw HushConnectionException("the server's certificate does not match the pin (it is sha256:$seen)")
    }
}

/**
 * Drives [registration] over [socket] until an event [wanted] accepts, or a
 * refusal; returns that event.
 *
 * @throws HushConnectionException on a refusal (its message names the
 *   server's code, e.g. `CONFLICT` for a taken user id), a closed
 *   connection, or after [timeoutMillis].
 */
@JvmOverloads
fun runRegistration(
    registration: Registration,
    socket: SSLSocket,
    wanted: (RegistrationEvent) -> Boolean,
    timeoutMillis: Long = REGISTRATION_TIMEOUT_MILLIS,
): RegistrationEvent {
    val deadline = System.nanoTime() + timeoutMillis * 1_000_000
    val input = socket.inputStream
    val output = socket.outputStream
    val buf = ByteArray(READ_SIZE)
    while (true) {
        val out = registration.takeTransmit()
        if (out.isNotEmpty()) {
            output.write(out)
            output.flush()
        }
        while (true) {
            val event = registration.pollEvent() ?: break
            if (wanted(event)) return event
            when (event) {
                is RegistrationEvent.Refused ->
                    throw HushConnectionException("the server refused: ${event.code.name}: ${event.reason}")
                is RegistrationEvent.LinkRefused ->
                    throw HushConnectionException("the link message was refused: ${event.reason}")
                else -> {}
            }
        }
        val left = (deadline - System.nanoTime()) / 1_000_000
        if (left <= 0) throw HushConnectionException("the server did not answer in time")
        socket.soTimeout = minOf(left, 1000L).toInt().coerceAtLeast(1)
        val n = try {
            input.read(buf)
        } catch (_: SocketTimeoutException) {
            continue
        } catch (e: IOException) {
            throw HushConnectionException("read failed: $e", e)
        }
        if (n < 0) throw HushConnectionException("the server closed the connection")
        registration.handleInput(buf.copyOf(n))
    }
}

/**
 * Registers [newDevice] (from `NewDevice.forNewAccount`) and returns the
 * device id the server gave; then create the `Device` with it.
 */
fun registerAccount(newDevice: NewDevice, host: String, port: Int, serverName: String, tls: HushTls): UInt {
    val registration = newDevice.registration(serverName)
    return registration.use { reg ->
        openTls(host, port, serverName, tls).use { socket ->
            val event = runRegistration(reg, socket, { it is RegistrationEvent.Registered })
            (event as RegistrationEvent.Registered).deviceId
        }
    }
}

/**
 * As a new device: asks the server for a provisioning address, calls
 * [onCode] with the link code to show (its hex is what `hush-cli approve`
 * takes), and waits up to [timeoutMillis] for an existing device to send
 * the account.
 */
@JvmOverloads
fun waitForLink(
    host: String,
    port: Int,
    serverName: String,
    tls: HushTls,
    onCode: (ByteArray) -> Unit,
    timeoutMillis: Long = 600_000,
): LinkedAccount =
    Registration.provisioning(serverName).use { reg ->
        openTls(host, port, serverName, tls).use { socket ->
            val shown = runRegistration(reg, socket, { it is RegistrationEvent.ShowCode })
            onCode((shown as RegistrationEvent.ShowCode).code)
            val linked = runRegistration(reg, socket, { it is RegistrationEvent.Linked }, timeoutMillis)
            (linked as RegistrationEvent.Linked).account
        }
    }

/**
 * Registers a device of the linked [account]; returns its keys and device
 * id, to create the `Device` with.
 */
fun registerLinkedDevice(
    account: LinkedAccount,
    host: String,
    port: Int,
    serverName: String,
    tls: HushTls,
): Pair<NewDevice, UInt> {
    val newDevice = NewDevice.forLinkedAccount(account)
    return newDevice to registerAccount(newDevice, host, port, serverName, tls)
}

/**
 * What a [HushConnection] reports. Called on the connection's threads, one
 * call at a time; do not block long in them (hand work to your own
 * executor or the UI thread).
 */
interface HushListener {
    /** An event of the client (messages, receipts, errors ...). */
    fun onEvent(event: ClientEvent)

    /** A connection (or reconnection) is up; the client logs in now. */
    fun onConnected() {}

    /**
     * The connection was lost. [retryInMillis] is the delay before the next
     * attempt, or null when the connection was closed for good.
     */
    fun onDisconnected(reason: String, retryInMillis: Long?) {}
}

/** Everything a [HushConnection] reports, as one type (see [EventQueue]). */
sealed class ConnectionEvent {
    /** An event of the client. */
    data class Event(val event: ClientEvent) : ConnectionEvent()

    /** A connection is up. */
    object Connected : ConnectionEvent()

    /** A connection was lost; [retryInMillis] is null when closed for good. */
    data class Disconnected(val reason: String, val retryInMillis: Long?) : ConnectionEvent()
}

/**
 * A [HushListener] that queues everything, for code that waits for events
 * in sequence (tests, command-line tools) rather than reacting to them.
 */
class EventQueue : HushListener {
    private val queue = LinkedBlockingQueue<ConnectionEvent>()

    override fun onEvent(event: ClientEvent) {
        queue.put(ConnectionEvent.Event(event))
    }

    override fun onConnected() {
        queue.put(ConnectionEvent.Connected)
    }

    override fun onDisconnected(reason: String, retryInMillis: Long?) {
        queue.put(ConnectionEvent.Disconnected(reason, retryInMillis))
    }

    /** The next event, or null after [timeoutMillis]. */
    fun poll(timeoutMillis: Long): ConnectionEvent? = queue.poll(timeoutMillis, TimeUnit.MILLISECONDS)

    /**
     * Takes events until one matches [predicate] and returns it; the others
     * are dropped.
     *
     * @throws java.util.concurrent.TimeoutException after [timeoutMillis].
     */
    @JvmOverloads
    fun waitFor(timeoutMillis: Long = 30_000, predicate: (ConnectionEvent) -> Boolean): ConnectionEvent {
        val deadline = System.nanoTime() + timeoutMillis * 1_000_000
        while (true) {
            val left = (deadline - System.nanoTime()) / 1_000_000
            if (left <= 0) throw java.util.concurrent.TimeoutException("no matching event in ${timeoutMillis} ms")
            val event = queue.poll(left, TimeUnit.MILLISECONDS) ?: continue
            if (predicate(event)) return event
        }
    }

    /** Like [waitFor], for a client event of type [T] that matches [predicate]. */
    inline fun <reified T : ClientEvent> waitForEvent(
        timeoutMillis: Long = 30_000,
        crossinline predicate: (T) -> Boolean = { true },
    ): T {
        val found = waitFor(timeoutMillis) { it is ConnectionEvent.Event && it.event is T && predicate(it.event) }
        return (found as ConnectionEvent.Event).event as T
    }
}

/**
 * Keeps a `Client` connected to its server.
 *
 * A reader thread owns the socket's input: it feeds what it reads to the
 * client, runs the client's timers (`timeoutMillis` / `handleTimeout`, with
 * the socket's read timeout) and hands every event to [listener]. A writer
 * thread is the only one that writes: it writes out `takeTransmit()` each
 * time it is woken. After a failure the reader thread reconnects, waiting
 * [initialBackoffMillis], doubled on each failure up to [maxBackoffMillis].
 *
 * The client is thread-safe: call `connection.client.sendText(...)` from
 * any thread (not Android's main thread for the blocking calls of this
 * class: [close]), then [wake]; [sendText], [confirm] and [call] do both.
 *
 * ```
 * HushConnection(client, "chat.example.org", 7443, "chat.example.org",
 *                HushTls.trusting(pem), listener).use { conn ->
 *     conn.start()
 *     conn.sendText("bob", "hello")
 * }
 * ```
 */
class HushConnection @JvmOverloads constructor(
    val client: Client,
    val host: String,
    val port: Int,
    val serverName: String,
    val tls: HushTls,
    private val listener: HushListener,
    val reconnect: Boolean = true,
    val initialBackoffMillis: Long = 500,
    val maxBackoffMillis: Long = 30_000,
) : AutoCloseable {
    private val closing = AtomicBoolean(false)
    private val closed = CountDownLatch(1)
    private val eventLock = Any()
    private val started = AtomicBoolean(false)

    @Volatile
    private var thread: Thread? = null

    @Volatile
    private var session: Session? = null

    /** Whether a TLS connection is up right now. */
    val isConnected: Boolean get() = session != null

    init {
        require(initialBackoffMillis > 0 && maxBackoffMillis >= initialBackoffMillis) {
            "backoff: 0 < initialBackoffMillis <= maxBackoffMillis"
        }
    }

    /** Starts the reader thread (it connects, then keeps connected). */
    fun start(): HushConnection {
        if (started.compareAndSet(false, true)) {
            thread = Thread(::run, "hush-connection").apply {
                isDaemon = true
                start()
            }
        }
        return this
    }

    /**
     * Closes the connection for good: writes out what is queued (acks, for
     * instance) for up to [flushMillis], closes the socket and waits for the
     * threads to end. Messages not yet stored by the server stay with the
     * client and are sent on the next connection. Blocks: not on Android's
     * main thread.
     */
    fun close(flushMillis: Long) {
        if (!closing.compareAndSet(false, true)) {
            joinThread(thread, flushMillis + 5_000)
            return
        }
        closed.countDown()
        session?.finish(flushMillis)
        joinThread(thread, flushMillis + 5_000)
    }

    /** [close] with up to 2 s to write out what is queued. */
    override fun close() = close(2_000L)

    /** Never waits for itself: close() may be called from the listener. */
    private fun joinThread(t: Thread?, millis: Long) {
        if (t != null && onOwnThread.get() != true) t.join(millis)
    }

    /** Set on this connection's reader and writer threads. */
    private val onOwnThread = ThreadLocal<Boolean>()

    /** Tells the writer thread the client has something to send. */
    fun wake() {
        session?.wake()
    }

    /** Sends text; returns the message id (`Sent` follows). */
    fun sendText(recipient: String, text: String): ByteArray = call { it.sendText(recipient, text) }

    /** Confirms a kept message (the server may drop it). */
    fun confirm(envelopeId: ByteArray) {
        call { it.confirm(envelopeId) }
    }

    /** Runs [block] with the client and wakes the writer to send what it queued. */
    fun <T> call(block: (Client) -> T): T {
        try {
            return block(client)
        } finally {
            wake()
        }
    }

    // -- the threads ---------------------------------------------------------

    private fun emit(what: String, f: () -> Unit) {
        try {
            synchronized(eventLock) { f() }
        } catch (e: Exception) {
            // An app callback must not kill the connection's threads.
            System.err.println("hush: the listener's $what failed: $e")
        }
    }

    /** Hands every pending event to the listener; returns why the client failed, if it did. */
    private fun pumpEvents(): String? {
        synchronized(eventLock) {
            while (true) {
                val event = try {
                    client.pollEvent() ?: return null
                } catch (e: HushException) {
                    return "the client failed: ${e.message}"
                }
                try {
                    listener.onEvent(event)
                } catch (e: Exception) {
                    System.err.println("hush: the listener's onEvent failed: $e")
                }
            }
        }
    }

    private fun run() {
        onOwnThread.set(true)
        var delay = initialBackoffMillis
        while (!closing.get()) {
            val reason = try {
                val socket = openTls(host, port, serverName, tls)
                delay = initialBackoffMillis
                serve(socket)
            } catch (e: HushConnectionException) {
                e.message ?: e.toString()
            }
            if (closing.get() || !reconnect) {
                emit("onDisconnected") { listener.onDisconnected(if (closing.get()) "closed" else reason, null) }
                return
            }
            emit("onDisconnected") { listener.onDisconnected(reason, delay) }
            if (closed.await(delay, TimeUnit.MILLISECONDS)) {
                emit("onDisconnected") { listener.onDisconnected("closed", null) }
                return
            }
            delay = minOf(delay * 2, maxBackoffMillis)
        }
        emit("onDisconnected") { listener.onDisconnected("closed", null) }
    }

    /** Runs one connection; returns why it ended. */
    private fun serve(socket: SSLSocket): String {
        val s = Session(socket)
        try {
            client.handleConnected()
        } catch (e: HushException) {
            s.abort()
            return "the client failed: ${e.message}"
        }
        session = s
        if (closing.get()) {
            // close() ran before this session was visible: end it here.
            s.finish(0)
        }
        emit("onConnected") { listener.onConnected() }
        s.startWriter()
        val reason = s.readLoop()
        session = null
        s.abort()
        return s.failure ?: reason
    }

    /** One TLS connection: this reader (the calling thread) and a writer thread. */
    private inner class Session(private val socket: SSLSocket) {
        private val wakeups = ArrayBlockingQueue<Unit>(1)
        private val input: InputStream = socket.inputStream
        private val output: OutputStream = socket.outputStream
        private val stopping = AtomicBoolean(false)
        private val finishedWriting = CountDownLatch(1)
        private var writer: Thread? = null

        @Volatile
        var failure: String? = null

        fun wake() {
            wakeups.offer(Unit)
        }

        fun startWriter() {
            writer = Thread(::writeLoop, "hush-connection-writer").apply {
                isDaemon = true
                start()
            }
            wake()
        }

        private fun flushOnce(): Boolean {
            val out = try {
                client.takeTransmit()
            } catch (e: HushException) {
                fail("the client failed: ${e.message}")
                return false
            }
            if (out.isNotEmpty()) {
                try {
                    output.write(out)
                    output.flush()
                } catch (e: IOException) {
                    fail("write failed: $e")
                    return false
                }
            }
            pumpEvents()?.let {
                fail(it)
                return false
            }
            return true
        }

        private fun writeLoop() {
            onOwnThread.set(true)
            try {
                while (!stopping.get()) {
                    wakeups.poll(1, TimeUnit.SECONDS)
                    if (!flushOnce()) return
                }
                // Closing: write out what is queued (acks, for instance).
                flushOnce()
            } finally {
                finishedWriting.countDown()
            }
        }

        private fun fail(reason: String) {
            if (failure == null) failure = reason
            closeSocket()
        }

        private fun closeSocket() {
            try {
                socket.close()
            } catch (_: IOException) {
            }
        }

        /** Reads until the connection ends; returns why. */
        fun readLoop(): String {
            val buf = ByteArray(READ_SIZE)
            while (!closing.get()) {
                val wait = try {
                    client.timeoutMillis()
                } catch (e: HushException) {
                    return "the client failed: ${e.message}"
                }
                if (wait != null && wait == 0UL) {
                    try {
                        client.handleTimeout()
                    } catch (e: HushException) {
                        return "the client failed: ${e.message}"
                    }
                    wake()
                    pumpEvents()?.let { return it }
                }
                // Wake at the client's next timer, and at least every second. The
                // timer has a one-second resolution: never spin while it reads 0.
                val timeout = if (wait == null) 1000L else wait.toLong().coerceIn(50L, 1000L)
                val n = try {
                    socket.soTimeout = timeout.toInt()
                    input.read(buf)
                } catch (_: SocketTimeoutException) {
                    continue
                } catch (e: IOException) {
                    return if (closing.get()) "closed" else "read failed: $e"
                }
                if (n < 0) return if (closing.get()) "closed" else "the server closed the connection"
                try {
                    client.handleInput(buf.copyOf(n))
                } catch (e: HushException.Protocol) {
                    return "protocol error: ${e.message}"
                } catch (e: HushException) {
                    return "the client failed: ${e.message}"
                }
                wake()
                pumpEvents()?.let { return it }
            }
            return "closed"
        }

        /** Stops the writer after a last flush (up to [flushMillis]), then closes the socket. */
        fun finish(flushMillis: Long) {
            stopping.set(true)
            wake()
            if (writer != null && onOwnThread.get() != true) {
                finishedWriting.await(flushMillis, TimeUnit.MILLISECONDS)
            }
            closeSocket()
        }

        /** Stops the writer now and closes the socket; waits for the writer. */
        fun abort() {
            stopping.set(true)
            closeSocket()
            wake()
            val w = writer
            if (w != null && w !== Thread.currentThread()) w.join(5_000)
        }
    }
}
