#!/usr/bin/env bash
# Installs what the binding tests need, where it is missing:
#   - Python packages (maturin, pytest, PyQt6, vodozemac) into the venv $VENV;
#   - kotlinc from npm (`kotlin-compiler`) into $TOOLS;
#   - JNA from Debian (`libjna-java`, which brings `libjna-jni`) and the
#     libraries Qt's offscreen platform loads, with apt (needs root).
# Prints `export NAME=value` lines for the caller to eval (KOTLINC, JNA_JAR).
# Anything it cannot install is an error: the binding tests never skip.
set -euo pipefail
: "${VENV:?set VENV}" "${TOOLS:?set TOOLS}"
KOTLIN_VERSION="${KOTLIN_VERSION:-2.4.20}"
log() { echo "bindings-tools: $*" >&2; }
die() { echo "bindings-tools: $*" >&2; exit 1; }

# apt: JNA and Qt's runtime libraries.
APT=(libjna-java libjna-jni libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core)
missing=()
for p in "${APT[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
fi
JNA_JAR=/usr/share/java/jna.jar
[ -f "$JNA_JAR" ] || die "$JNA_JAR is missing (Debian package libjna-java)"

# Python: the test tools in the venv.
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r "$(dirname "$0")/../bindings/requirements-test.txt" || die "pip install failed"

# Kotlin: the compiler from npm (it is not linked into node_modules/.bin).
KOTLINC="$TOOLS/node_modules/kotlin-compiler/bin/kotlinc"
if [ ! -x "$KOTLINC" ]; then
    command -v npm >/dev/null || die "npm is missing (it installs kotlinc)"
    log "npm install kotlin-compiler@$KOTLIN_VERSION"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --silent "kotlin-compiler@$KOTLIN_VERSION" >&2 \
        || die "npm install kotlin-compiler failed"
fi
[ -x "$KOTLINC" ] || die "kotlinc is missing at $KOTLINC"
command -v java >/dev/null || die "java is missing (kotlinc and the Kotlin tests need a JDK 17+)"

echo "export KOTLINC='$KOTLINC'"
echo "export JNA_JAR='$JNA_JAR'"
