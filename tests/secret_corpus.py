"""Fake secrets of every common kind, and look-alikes that are no secrets, built at run time.

Nothing here is written out as a key would be: every value is assembled from a prefix and seeded random
characters, so that the committed source matches no secret scanner's patterns and no real key.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
LOWER_HEX = "0123456789abcdef"
URLSAFE = ALNUM + "_-"


@dataclass(frozen=True)
class Fake:
    """A fake secret: its text, the kind scrub must name, and how it sits in a line (`{}` is the secret)."""

    kind: str
    value: str
    context: str = "here it is: {} - keep it safe"

    @property
    def line(self) -> str:
        return self.context.format(self.value)


class Maker:
    """Random strings from a seed: the same corpus every run."""

    def __init__(self, seed: int = 14) -> None:
        self.rnd = random.Random(seed)

    def chars(self, n: int, alphabet: str = ALNUM) -> str:
        while True:
            text = "".join(self.rnd.choice(alphabet) for _ in range(n))
            # Random keys hold upper and lower case letters and digits: make sure these do, where they can.
            if alphabet != ALNUM or (any(c.isupper() for c in text) and any(c.islower() for c in text)
                                     and any(c.isdigit() for c in text)):
                return text

    def b64(self, n_bytes: int) -> str:
        return base64.b64encode(self.rnd.randbytes(n_bytes)).decode()


def pem(label: str, body: str, width: int = 64, newline: str = "\n") -> str:
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    return newline.join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])


def jwt(m: Maker) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return ".".join([part({"alg": "HS256", "typ": "JWT"}), part({"sub": m.chars(12), "iat": 1700000000}),
                     m.chars(43, URLSAFE)])


def anthropic_key(m: Maker) -> str:
    return "sk-" + "ant-api03-" + m.chars(93, URLSAFE) + "AA"


def aws_key_id(m: Maker) -> str:
    return "AKIA" + m.chars(16, UPPER_DIGITS)


def aws_secret(m: Maker) -> str:
    while True:
        secret = m.chars(40, ALNUM + "+/")
        if any(c.isupper() for c in secret) and any(c.islower() for c in secret):
            return secret


def github_token(m: Maker) -> str:
    return "ghp_" + m.chars(36)


def openssh_key(m: Maker) -> str:
    return pem("OPENSSH PRIVATE KEY", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" + m.b64(380), width=70)


def fakes(seed: int = 14) -> list[Fake]:
    """One or more fakes of every kind scrub knows."""
    m = Maker(seed)
    key_id, secret = aws_key_id(m), aws_secret(m)
    return [
        Fake("Anthropic API key", anthropic_key(m), "export ANTHROPIC_API_KEY={}"),
        Fake("Anthropic API key", "sk-" + "ant-admin01-" + m.chars(93, URLSAFE) + "AA"),
        Fake("Anthropic API key", "sk-" + "ant-oat01-" + m.chars(100, URLSAFE), '{{"token": "{}"}}'),
        Fake("OpenAI API key", "sk-" + "proj-" + m.chars(74, URLSAFE) + "T3Blbk" + "FJ" + m.chars(74, URLSAFE)),
        Fake("OpenAI API key", "sk-" + "svcacct-" + m.chars(58, URLSAFE) + "T3Blbk" + "FJ" + m.chars(58, URLSAFE)),
        Fake("OpenAI API key", "sk-" + m.chars(20) + "T3Blbk" + "FJ" + m.chars(20), "OPENAI_API_KEY='{}'"),
        Fake("API key", "sk-" + m.chars(48), "client = OpenAI(api_key=\"{}\")"),
        Fake("API key", "sk-" + "or-v1-" + m.chars(64, LOWER_HEX), "OPENROUTER_API_KEY={}"),
        Fake("Google API key", "AIza" + m.chars(35, URLSAFE), "https://example.googleapis.com/v1/x?key={}&alt=sse"),
        Fake("Supermemory API key", "sm_" + m.chars(22) + "_" + m.chars(60), "SUPERMEMORY_API_KEY={}"),
        Fake("GitHub token", github_token(m), "git clone https://{}@github.com/acme/app.git"),
        Fake("GitHub token", "gho_" + m.chars(36)),
        Fake("GitHub token", "github_pat_" + m.chars(22) + "_" + m.chars(59), "GH_TOKEN={}"),
        Fake("GitLab token", "glpat-" + m.chars(20, URLSAFE)),
        Fake("Hugging Face token", "hf_" + m.chars(34, string.ascii_letters)),
        Fake("Groq API key", "gsk_" + m.chars(52)),
        Fake("PyPI token", "pypi-" + "AgEIcHlwaS5vcmc" + m.chars(70, URLSAFE), "password = {}"),
        Fake("npm token", "npm_" + m.chars(36)),
        Fake("npm token", str(uuid.UUID(int=m.rnd.getrandbits(128))), "//registry.npmjs.org/:_authToken={}"),
        Fake("Slack token", "xoxb-" + m.chars(11, string.digits) + "-" + m.chars(13, string.digits) + "-"
             + m.chars(24, string.ascii_lowercase + string.digits)),
        Fake("Slack token", "xapp-1-A" + m.chars(10, UPPER_DIGITS) + "-" + m.chars(13, string.digits) + "-"
             + m.chars(64, LOWER_HEX)),
        Fake("Slack webhook", "https://hooks.slack.com/services/T" + m.chars(10, UPPER_DIGITS) + "/B"
             + m.chars(10, UPPER_DIGITS) + "/" + m.chars(24)),
        Fake("Stripe key", "sk_" + "live_" + m.chars(99)),
        Fake("Stripe key", "rk_" + "live_" + m.chars(24)),
        Fake("Stripe key", "sk_" + "test_" + m.chars(24)),
        Fake("Stripe key", "whsec_" + m.chars(32)),
        Fake("SendGrid key", "SG." + m.chars(22, URLSAFE) + "." + m.chars(43, URLSAFE)),
        Fake("Twilio key", "SK" + m.chars(32, LOWER_HEX)),
        Fake("Mailchimp key", m.chars(32, LOWER_HEX) + "-us6"),
        Fake("Square OAuth secret", "sq0csp-" + m.chars(43, URLSAFE)),
        Fake("Azure storage key", m.b64(64), "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={};"),
        Fake("JWT", jwt(m), "Authorization: Bearer {}"),
        Fake("password in URL", m.chars(16), "DATABASE_URL=postgres://app:{}@db.internal:5432/app"),
        Fake("AWS access key", key_id, "aws_access_key_id = {}"),
        Fake("AWS secret access key", secret, "aws_secret_access_key = {}"),
        Fake("AWS secret access key", aws_secret(m), f"key {aws_key_id(m)}, secret {{}}"),
        Fake("AWS secret access key", aws_secret(m), f"secret: {{}}\nid: {aws_key_id(m)}"),
        Fake("AWS access key", aws_key_id(m), "我的密钥是{}，请保管"),
        Fake("private key", openssh_key(m), "my key:\n{}\nthanks"),
        Fake("private key", pem("RSA PRIVATE KEY", m.b64(600))),
        Fake("private key", pem("PRIVATE KEY", m.b64(600)), '{{"private_key": "{}"}}'.replace("\n", "\\n")),
        Fake("private key", pem("EC PRIVATE KEY", m.b64(120), newline="\\n"), '{{"type": "service_account", "private_key": "{}\\n"}}'),
        Fake("private key", pem("PGP PRIVATE KEY BLOCK", m.b64(500))),
        Fake("private key", pem("ENCRYPTED PRIVATE KEY", m.b64(700)).rsplit("\n", 3)[0], "cut short:\n{}"),
    ]


def look_alikes(seed: int = 14) -> list[str]:
    """Text that holds no secret and must come out of scrub unchanged."""
    m = Maker(seed + 1)
    sha1, sha256 = m.chars(40, LOWER_HEX), m.chars(64, LOWER_HEX)
    image = m.b64(3000)
    return [
        f"commit {sha1}\nAuthor: dev <dev@example.com>",
        f"git cherry-pick {sha1[:12]} {m.chars(40, LOWER_HEX)}",
        f"The aws key rotation landed in {sha1}",  # detect-secrets' `aws ... key ... <40>` pattern; a SHA is no key
        f"sha256:{sha256}  dist/app.tar.gz",
        f"sha512-{m.b64(64)}",  # a lockfile's integrity hash
        f"integrity: sha256-{m.b64(32)}",
        *(f'{{"id": "{uuid.UUID(int=m.rnd.getrandbits(128))}", "parent": "{uuid.uuid5(uuid.NAMESPACE_DNS, str(i))}"}}'
          for i in range(5)),
        f'<img src="data:image/png;base64,{image}">',
        f"![chart](data:image/jpeg;base64,{m.b64(4000)})",
        "\n".join(m.b64(2000)[i : i + 76] for i in range(0, 2000, 76)),  # MIME-wrapped base64
        "this_is_a_very_long_snake_case_identifier_used_for_configuration_lookups = 1",
        "AbstractSingletonProxyFactoryBeanConfigurationManagerInterfaceImplementation()",
        "sm_register_callback_for_the_very_long_event_name_here(handler)",
        "hf_hub_download_with_retries_and_exponential_backoff(repo)",
        "Reset your password in the settings page; the password must be at least 12 characters long.",
        'password = getpass.getpass("Password: ")\nif not password:\n    raise SystemExit(1)',
        'token_type = "bearer"\nheaders = {"Authorization": f"Bearer {token}"}',
        'api_key = os.environ["OPENAI_API_KEY"]\nsecret_key: str = Field(default="", repr=False)',
        "Anthropic keys start with sk-ant-api03- and OpenAI project keys with sk-proj-.",
        "Keys look like AKIA followed by 16 characters; see the IAM docs.",
        "-----BEGIN PUBLIC KEY-----\n" + m.b64(270) + "\n-----END PUBLIC KEY-----",
        pem("CERTIFICATE", m.b64(900)),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + m.chars(43, ALNUM + "+/") + " dev@laptop",
        "The file starts with BEGIN OPENSSH PRIVATE KEY and must be mode 0600.",
        "https://user@example.com/repo.git and http://localhost:8080/v1 and mailto:dev@example.com",
        "color: #1a2b3c; background: #ffffff; font: 12px/1.5 monospace;",
        "version 1.110.2, build 20260930.1, port 8080, pid 4242",
        f"request id req_{m.chars(24)} and trace {m.chars(32, LOWER_HEX)}",
        "[secret: AWS access key] and [secret: private key] were removed before",
    ]
