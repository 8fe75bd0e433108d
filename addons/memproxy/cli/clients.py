"""`memproxy env` and `memproxy certs`: point clients at the proxy and make them trust its CA."""

from __future__ import annotations

import os
import shlex
import ssl
import stat
import tempfile
from pathlib import Path

import click
from rich.markup import escape

from .common import confdir_option, console, listen_options, proxy_url

CA_CERT = "mitmproxy-ca-cert.pem"
BUNDLE = "memproxy-bundle.pem"
NO_PROXY = "localhost,127.0.0.1,::1"
SHELLS = ("bash", "zsh", "fish", "powershell")

# Trust instructions per client; {ca}, {cer} and {bundle} are filled in. certs/README.md says the same.
TRUST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Node tools (Claude Code, Gemini CLI, Qwen Code, opencode): Node adds it to its roots",
     ("export NODE_EXTRA_CA_CERTS={ca}",)),
    ("Codex CLI", ("export CODEX_CA_CERTIFICATE={bundle}",)),
    ("Python (openai/anthropic SDKs, httpx, requests): these replace the roots, hence the bundle",
     ("export SSL_CERT_FILE={bundle}", "export REQUESTS_CA_BUNDLE={bundle}")),
    ("Java / JetBrains IDEs: prefer a per-project port (`memproxy projects add`, no CA needed); or in the IDE"
     " Settings → Tools → Server Certificates → + {ca}; or into a JDK's store",
     ('keytool -importcert -noprompt -alias mitmproxy -file {ca} -keystore "$JAVA_HOME/lib/security/cacerts"'
      " -storepass changeit",)),
    ("Debian/Ubuntu trust store",
     ("sudo cp {ca} /usr/local/share/ca-certificates/mitmproxy.crt && sudo update-ca-certificates",)),
    ("Fedora trust store", ("sudo trust anchor {ca}",)),
    ("macOS trust store", ("sudo security add-trusted-cert -d -p ssl -p basic -k /Library/Keychains/System.keychain {ca}",)),
    ("Windows trust store", ("certutil -addstore root {cer}",)),
)


def ensure_ca(confdir: Path) -> tuple[Path, Path]:
    """The mitmproxy CA certificate and a bundle of the public roots plus it, created if missing.

    Variables such as SSL_CERT_FILE replace a client's roots, hence the bundle; it is rebuilt
    when the CA is newer than it.
    """
    ca = confdir / CA_CERT
    if not ca.exists():
        from mitmproxy import certs

        try:
            certs.CertStore.from_store(confdir, "mitmproxy", 2048)
        except OSError as e:
            raise click.ClickException(f"cannot create the mitmproxy CA in {confdir}: {e}") from None
    bundle = confdir / BUNDLE
    if not bundle.exists() or bundle.stat().st_mtime < ca.stat().st_mtime:
        roots = Path(ssl.get_default_verify_paths().openssl_cafile)
        if not roots.is_file():
            import certifi

            roots = Path(certifi.where())
        try:
            fd, tmp = tempfile.mkstemp(dir=confdir, prefix=f".{BUNDLE}.")
            with os.fdopen(fd, "wb") as f:
                f.write(roots.read_bytes().rstrip(b"\n") + b"\n" + ca.read_bytes())
            # Public certificates only: readable by whoever can read the CA certificate, never writable by others.
            os.chmod(tmp, stat.S_IMODE(ca.stat().st_mode) & 0o644)
            os.replace(tmp, bundle)
        except OSError as e:
            raise click.ClickException(f"cannot write the CA bundle {bundle}: {e}") from None
    return ca, bundle


def client_env(host: str, port: int, confdir: Path) -> dict[str, str]:
    """The environment that points clients at the proxy and makes them trust its CA."""
    ca, bundle = ensure_ca(confdir)
    url = proxy_url(host, port)
    env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "NO_PROXY": NO_PROXY}
    env |= {k.lower(): v for k, v in env.items()}
    return env | {
        "NODE_EXTRA_CA_CERTS": str(ca),  # Node adds it to its roots
        "SSL_CERT_FILE": str(bundle),  # these replace the roots: the bundle
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CODEX_CA_CERTIFICATE": str(bundle),
    }


def render_env(env: dict[str, str], shell: str) -> str:
    """`env` as statements that `shell` can evaluate."""

    def fish(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def powershell(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    line = {
        "bash": lambda k, v: f"export {k}={shlex.quote(v)}",
        "zsh": lambda k, v: f"export {k}={shlex.quote(v)}",
        "fish": lambda k, v: f"set -gx {k} {fish(v)}",
        "powershell": lambda k, v: f"$env:{k} = {powershell(v)}",
    }[shell]
    return "\n".join(line(k, v) for k, v in env.items())


@click.command()
@click.option("--shell", type=click.Choice(SHELLS), default=None,
              help="The shell to print for. Default: from $SHELL, else bash.")
@listen_options
@confdir_option
def env(shell: str | None, host: str, port: int, confdir: Path) -> None:
    """Print the environment that points clients at the proxy and trusts its CA (creating the CA if missing).

    \b
    bash/zsh:    eval "$(memproxy env)"
    fish:        memproxy env --shell fish | source
    PowerShell:  memproxy env --shell powershell | Invoke-Expression
    """
    if shell is None:
        shell = Path(os.environ.get("SHELL", "")).name
        shell = shell if shell in SHELLS else "bash"
    click.echo(render_env(client_env(host, port, confdir), shell))


@click.command()
@confdir_option
def certs(confdir: Path) -> None:
    """Create the mitmproxy CA if missing, print its path, and how each client trusts it."""
    existed = (confdir / CA_CERT).exists()
    ca, bundle = ensure_ca(confdir)
    paths = {"ca": shlex.quote(str(ca)), "cer": str(ca.with_suffix(".cer")), "bundle": shlex.quote(str(bundle))}
    console.print(f"mitmproxy CA: [bold]{escape(str(ca))}[/] ({'exists' if existed else 'created now'})")
    console.print(f"bundle (public roots + CA): [bold]{escape(str(bundle))}[/]")
    console.print("Keep mitmproxy-ca.pem (the CA's private key) to yourself. Reverse mode needs no CA at all.")
    for who, lines in TRUST:
        console.print(f"\n[bold]{escape(who.format(**paths))}[/]")
        for line in lines:
            console.print(f"  {escape(line.format(**paths))}")
    console.print('\nAll client variables at once: [bold]eval "$(memproxy env)"[/]. See certs/README.md.')
