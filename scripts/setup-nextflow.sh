#!/usr/bin/env bash
# The project's Nextflow test runtime (tests/nextflow/README.md): Nextflow assembled from Maven
# Central with `mvn`, because the official launcher downloads its jar from a host the development
# and CI machines cannot reach. Users install Nextflow the ordinary way (docs/usage.md).
#
#   bash scripts/setup-nextflow.sh          -> prints the path of the `nextflow` launcher
#
# Idempotent: the jars live in .tools/nextflow-<version>/lib (git-ignored; Maven's own cache in
# ~/.m2 makes a rebuild cheap). Every jar is checked against tests/nextflow/runtime/jars.sha256,
# and the set of jars must be exactly that list: no silent upgrade, no extra dependency.
# Needs Java 17-24 and Maven (Debian: apt-get install maven). Exit codes: 0 ready, 1 failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
spec=$repo/tests/nextflow/runtime
version=$(sed -n 's/^[0-9a-f]*  nextflow-\([0-9][^ ]*\)\.jar$/\1/p' "$spec/jars.sha256")
[ -n "$version" ] || { echo "setup-nextflow: no nextflow-<version>.jar in $spec/jars.sha256" >&2; exit 1; }
dest=${E2M_NEXTFLOW_DIR:-$repo/.tools/nextflow-$version}

say() { echo "setup-nextflow: $*" >&2; }
die() { say "$*"; exit 1; }

java_cmd=${JAVA_CMD:-${JAVA_HOME:+$JAVA_HOME/bin/java}}
java_cmd=${java_cmd:-java}
java_major=$("$java_cmd" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$java_major" ] || die "Java not found ($java_cmd); Nextflow $version needs Java 17-24"
{ [ "$java_major" -ge 17 ] && [ "$java_major" -le 24 ]; } \
  || die "Java $java_major found ($java_cmd); Nextflow $version needs Java 17-24 (set JAVA_HOME)"

# The jars in $1 are exactly those of jars.sha256, with those contents.
verified() {
  [ -d "$1" ] || return 1
  diff -q <(cd "$1" && ls -1 -- *.jar 2>/dev/null | sort) \
          <(awk '{print $2}' "$spec/jars.sha256" | sort) >/dev/null || return 1
  (cd "$1" && sha256sum --quiet --strict -c "$spec/jars.sha256" >/dev/null 2>&1)
}

if ! verified "$dest/lib"; then
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to assemble Nextflow $version"
  say "resolving Nextflow $version and its dependencies from Maven Central"
  mkdir -p "$dest"
  staging=$(mktemp -d "$dest/.lib.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  mvn -B -q -Dstyle.color=never -f "$spec/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$staging" >&2 \
    || die "mvn could not resolve the runtime (see the error above)"
  if ! verified "$staging"; then
    diff <(cd "$staging" && sha256sum -- *.jar | sort -k2) <(sort -k2 "$spec/jars.sha256") >&2 || true
    die "the resolved jars differ from tests/nextflow/runtime/jars.sha256 (above: < resolved, > pinned)"
  fi
  rm -rf "$dest/lib"
  mv "$staging" "$dest/lib"
  trap - EXIT
fi

mkdir -p "$dest/bin"
launcher=$dest/bin/nextflow
tmp=$(mktemp "$dest/bin/.nextflow.XXXXXX")
cat > "$tmp" <<EOF
#!/usr/bin/env bash
# Nextflow $version assembled by scripts/setup-nextflow.sh; same command line as the official
# launcher. Main class nextflow.cli.Launcher; the nextflow jar comes first on the class path
# because BuildInfo reads META-INF/build-info.properties from the first jar that has it.
# The --add-opens list is the official launcher's (v$version).
lib=$dest/lib
EOF
cat >> "$tmp" <<'EOF'
java_cmd=${JAVA_CMD:-${JAVA_HOME:+$JAVA_HOME/bin/java}}
export NXF_HOME=${NXF_HOME:-$(dirname "$lib")/home}
export NXF_OFFLINE=${NXF_OFFLINE:-true}
export NXF_DISABLE_CHECK_LATEST=true
unset JAVA_TOOL_OPTIONS TOWER_ACCESS_TOKEN
opens=()
for pkg in java.lang java.io java.nio java.net java.util java.util.concurrent.locks \
    java.util.concurrent.atomic java.nio.file.spi sun.nio.ch sun.nio.fs \
    sun.net.www.protocol.http sun.net.www.protocol.https sun.net.www.protocol.ftp \
    sun.net.www.protocol.file jdk.internal.misc jdk.internal.vm java.util.regex; do
  opens+=("--add-opens=java.base/$pkg=ALL-UNNAMED")
done
# shellcheck disable=SC2086  # NXF_OPTS / NXF_JVM_ARGS are word lists, as in the official launcher
exec "${java_cmd:-java}" $NXF_OPTS $NXF_JVM_ARGS "${opens[@]}" -Dfile.encoding=UTF-8 \
  -Djava.awt.headless=true -cp "$(ls "$lib"/nextflow-[0-9]*.jar):$lib/*" nextflow.cli.Launcher "$@"
EOF
chmod 755 "$tmp"
mv -f "$tmp" "$launcher"
"$launcher" -version >/dev/null 2>&1 || die "the assembled Nextflow does not start: $launcher -version"
echo "$launcher"
