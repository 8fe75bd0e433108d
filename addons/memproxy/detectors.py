"""The secret detectors that `scrub` runs: detect-secrets' regex plugins, and plugins of ours for the keys it lacks.

Our plugins are written the library's way (`RegexBasedDetector`: a `secret_type` and a `denylist` of
compiled patterns). Of the library's own plugins these are left out:
- the high-entropy ones (Base64HighEntropyString, HexHighEntropyString): they take hashes, ids and base64
  data for secrets;
- KeywordDetector: it takes code such as `token_type = "bearer"` for a secret;
- the Cloudant, IBM Cloud IAM, IBM COS and SoftLayer plugins: patterns of a `key = value` kind that are
  tried at every position of a text (the costliest to run), for services rarely met in prompts;
- PrivateKeyDetector: it finds the first line of a key; PrivateKeyBlockDetector takes the whole block.
No plugin's `verify` is ever called: it would send the secret to its service.

This module imports detect-secrets, which imports requests: `scrub` imports it on first use, off the
event loop, never at start-up.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from detect_secrets.core.potential_secret import PotentialSecret
from detect_secrets.plugins import (
    artifactory,
    aws,
    azure_storage_key,
    basic_auth,
    discord,
    github_token,
    jwt,
    mailchimp,
    npm,
    sendgrid,
    slack,
    square_oauth,
    stripe,
    twilio,
)
from detect_secrets.plugins.base import RegexBasedDetector

# Patterns need no boundaries of their own: scrub leaves alone a match that runs on into letters or
# digits. Where one is needed, it is in ASCII: in a language written without spaces, \b would join a
# key to the words around it.
AWS_KEY_ID = r"(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"
# 40 characters of base64 on their own, upper and lower case among them (a git SHA is lower case hex)
AWS_SECRET = (
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
NEAR = r"[\s\S]{0,200}?"  # how far apart an AWS key id and its secret access key may be


class AnthropicKeyDetector(RegexBasedDetector):
    secret_type = "Anthropic API key"
    # API keys (api03), admin keys (admin01), OAuth access and refresh tokens (oat01, ort01)
    denylist = (re.compile(r"sk-ant-[a-z]{3,6}\d\d-[A-Za-z0-9_-]{20,}"),)


class OpenAIKeyDetector(RegexBasedDetector):
    secret_type = "OpenAI API key"
    denylist = (
        re.compile(r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}"),  # project, service account, admin
        re.compile(r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"),  # user keys
    )


class PrefixedKeyDetector(RegexBasedDetector):
    """`sk-` and 32 or more letters and digits: the key shape of OpenAI's older keys and of many compatible APIs."""

    secret_type = "API key"
    denylist = (re.compile(r"sk-(?:or-v1-)?[A-Za-z0-9]{32,}"),)


class GoogleApiKeyDetector(RegexBasedDetector):
    secret_type = "Google API key"
    denylist = (re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),)


class SupermemoryKeyDetector(RegexBasedDetector):
    secret_type = "Supermemory API key"
    denylist = (re.compile(r"sm_[A-Za-z0-9_]{30,}"),)


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    secret_type = "GitHub token"
    denylist = (re.compile(r"github_pat_[A-Za-z0-9_]{22,}"),)


class GitLabTokenDetector(RegexBasedDetector):
    secret_type = "GitLab token"
    denylist = (re.compile(r"gl(?:pat|dt|ft|rt|soat)-[A-Za-z0-9_-]{20,}"),)


class HuggingFaceTokenDetector(RegexBasedDetector):
    secret_type = "Hugging Face token"
    denylist = (re.compile(r"hf_[A-Za-z]{34,}"),)


class GroqKeyDetector(RegexBasedDetector):
    secret_type = "Groq API key"
    denylist = (re.compile(r"gsk_[A-Za-z0-9]{48,}"),)


class PyPITokenDetector(RegexBasedDetector):
    secret_type = "PyPI token"
    denylist = (re.compile(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),)


class SlackAppTokenDetector(RegexBasedDetector):
    """The Slack tokens that the library's SlackDetector (xoxa/b/p/o/s/r) does not know: app-level and rotating."""

    secret_type = "Slack token"
    denylist = (
        re.compile(r"xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+"),
        re.compile(r"xoxe(?:\.xox[bp])?-\d-[A-Za-z0-9]{100,}"),
    )


class StripeKeyDetector(RegexBasedDetector):
    """Stripe keys of any length, test keys too (the library's StripeDetector stops after 24 characters), and
    webhook secrets."""

    secret_type = "Stripe key"
    denylist = (
        re.compile(r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,}"),
        re.compile(r"whsec_[A-Za-z0-9]{32,}"),
    )


class AwsKeyIdDetector(RegexBasedDetector):
    """AWS access key ids with ASCII boundaries (the library's pattern has \\b)."""

    secret_type = "AWS access key"
    denylist = (re.compile(AWS_KEY_ID),)


class AwsSecretKeyDetector(RegexBasedDetector):
    """An AWS secret access key next to its key id, before or after it (the library finds one only after
    a word such as `aws_secret_access_key`)."""

    secret_type = "AWS secret access key"
    denylist = (
        re.compile(AWS_KEY_ID + NEAR + AWS_SECRET),
        # The id after the secret is looked ahead for, not matched: a next secret may come before that id.
        re.compile(AWS_SECRET + "(?=" + NEAR + r"(?<![A-Za-z0-9])" + AWS_KEY_ID + ")"),
    )


class PrivateKeyBlockDetector(RegexBasedDetector):
    """A private key block, from BEGIN to END (PEM, OpenSSH, PGP), newlines raw or escaped as in JSON.

    Without an END (a paste cut short), the block runs as far as its lines look like key material.
    """

    secret_type = "private key"
    _label = r"[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    _line_break = r"(?:[ \t]*(?:\r?\n|\\r\\n|\\n))+"
    _key_line = r"(?:[A-Za-z0-9+/]{20,}={0,2}|[A-Za-z0-9+/]{0,19}={1,2}|[A-Za-z-]+:[^\r\n\\]*)"
    denylist = (
        re.compile(
            rf"-----BEGIN{_label}(?:[\s\S]{{0,16384}}?-----END{_label}|(?:{_line_break}{_key_line})*)"
        ),
    )


def _mixed_case(value: str) -> bool:
    """Upper and lower case letters: a random key has both; a hex hash, a word or a snake_case name has not."""
    return any(c.isupper() for c in value) and any(c.islower() for c in value)


def _has_digit(value: str) -> bool:
    return any(c in string.digits for c in value)


def _lines_around(text: str, start: int, end: int, lines: int = 2) -> str:
    """The lines of `text` that hold `text[start:end]`, with up to `lines` more before and after."""
    first = text.rfind("\n", 0, start) + 1
    for _ in range(lines):
        if first > 0:
            first = text.rfind("\n", 0, first - 1) + 1
    last = text.find("\n", end)
    for _ in range(lines):
        if last >= 0:
            last = text.find("\n", last + 1)
    return text[first : len(text) if last < 0 else last]


AZURE = azure_storage_key.AzureStorageKeyDetector()


def _azure_context(text: str, start: int, end: int) -> bool:
    """The library's own test for an Azure storage key, which its denylist alone lacks: `AccountKey` or `azure`
    near it, and no lock file's integrity hash."""
    secret = PotentialSecret(type=AZURE.secret_type, filename="text", secret=text[start:end])
    return AZURE.context_keys_exists(secret, _lines_around(text, start, end))


# What a found secret of these kinds must also be, given the text, its start and its end. An AWS secret
# access key that the library finds after `aws ... key` is not a git SHA.
PLAUSIBLE: dict[str, Callable[[str, int, int], bool]] = {
    "AWS secret access key": lambda text, start, end: _mixed_case(text[start:end]),
    "Supermemory API key": lambda text, start, end: _mixed_case(text[start:end]) and _has_digit(text[start:end]),
    "Hugging Face token": lambda text, start, end: _mixed_case(text[start:end]),
    "Azure storage key": _azure_context,
}


@dataclass(frozen=True, slots=True)
class Detector:
    """A plugin, and the kind of secret each pattern of its denylist finds."""

    plugin: RegexBasedDetector
    kinds: tuple[str, ...]

    def kind(self, index: int) -> str:
        return self.kinds[min(index, len(self.kinds) - 1)]

    @property
    def checks(self) -> bool:
        """Whether the plugin checks what its patterns find (its own analyze_string: a JWT must decode)."""
        return type(self.plugin).analyze_string is not RegexBasedDetector.analyze_string


def _ours(plugin: RegexBasedDetector) -> Detector:
    return Detector(plugin, (str(plugin.secret_type),))


def detectors() -> tuple[Detector, ...]:
    """Every detector scrub runs, the library's first."""
    return (
        Detector(aws.AWSKeyDetector(), ("AWS access key", "AWS secret access key")),
        Detector(artifactory.ArtifactoryDetector(), ("Artifactory token",)),
        Detector(AZURE, ("Azure storage key",)),
        Detector(basic_auth.BasicAuthDetector(), ("password in URL",)),
        Detector(discord.DiscordBotTokenDetector(), ("Discord bot token",)),
        Detector(github_token.GitHubTokenDetector(), ("GitHub token",)),
        Detector(jwt.JwtTokenDetector(), ("JWT",)),
        Detector(mailchimp.MailchimpDetector(), ("Mailchimp key",)),
        Detector(npm.NpmDetector(), ("npm token",)),
        Detector(sendgrid.SendGridDetector(), ("SendGrid key",)),
        Detector(slack.SlackDetector(), ("Slack token", "Slack webhook")),
        Detector(square_oauth.SquareOAuthDetector(), ("Square OAuth secret",)),
        Detector(stripe.StripeDetector(), ("Stripe key",)),
        Detector(twilio.TwilioKeyDetector(), ("Twilio key",)),
        _ours(AnthropicKeyDetector()),
        _ours(OpenAIKeyDetector()),
        _ours(PrefixedKeyDetector()),
        _ours(GoogleApiKeyDetector()),
        _ours(SupermemoryKeyDetector()),
        _ours(GitHubFineGrainedTokenDetector()),
        _ours(GitLabTokenDetector()),
        _ours(HuggingFaceTokenDetector()),
        _ours(GroqKeyDetector()),
        _ours(PyPITokenDetector()),
        _ours(SlackAppTokenDetector()),
        _ours(StripeKeyDetector()),
        _ours(AwsKeyIdDetector()),
        _ours(AwsSecretKeyDetector()),
        _ours(PrivateKeyBlockDetector()),
    )
