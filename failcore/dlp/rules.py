"""Built-in high-certainty detectors.

Patterns are written in the common subset of RE2 and Hyperscan syntax (no lookaround, no backrefs).
Every keyword of a rule is a literal that occurs in each of its matches, which keeps the RE2 keyword
windows exact. Values that end in characters like `-` or `_` use an explicit terminator group instead
of `\\b`, and the secret is always capture group 1.

Size: ~800 lines because it is a table: one short entry per provider format (about a hundred), read
top to bottom like gitleaks' own rule file; split across modules, a reader would lose the one list
to search when asking "does failcore know this token?".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failcore.dlp.model import DlpAllowlist, DlpRule

if TYPE_CHECKING:
    from failcore.policy.model import Policy

# Starts a token like `\b` would, but also right after a JSON/C escape such as `\n` (a raw request
# body holds "...\\nghp_..." where `\b` sees the letter n).
_START = r"(?:^|[^A-Za-z0-9_]|\\[nrt])"
# Ends a token whose alphabet is base64url-ish.
_END_URLSAFE = r"(?:[^A-Za-z0-9_-]|$)"
_END_B64 = r"(?:[^A-Za-z0-9+/=]|$)"
# An assignment operator with optional quoting as found in code, env files, JSON and YAML (also inside
# JSON-escaped strings, hence the optional backslash before a quote).
_ASSIGN = r"(?:\\?[\x60'\"]){0,2}[ \t]{0,5}(?:=|:|=>|:=)[ \t]{0,5}(?:\\?[\x60'\"]){0,2}"
# A secret that is a documented example or a placeholder, as in docs, tests and templates.
_PLACEHOLDER_SECRET = (
    r"(?i)example|placeholder|redacted|dummy|sample|your[_-]?(?:api|key|token|secret)",
    r"(?i)(?:x{6,}|\*{4,}|0{10,}|\.{3}|<[a-z_ -]+>|abcdefghij)",
)
# Google API keys that ship in public apps and samples (the list gitleaks allows for gcp-api-key,
# https://github.com/gitleaks/gitleaks, MIT): not a leak when an agent sends them.
_PUBLIC_GOOGLE_KEYS = (
    "^AIza(?:"
    + "|".join(
        (
            "Syabcdefghijklmnopqrstuvwxyz1234567",
            "SyAnLA7NfeLquW1tJFpx_eQCxoX-oo6YyIs",
            "SyCkEhVjf3pduRDt6d1yKOMitrUEke8agEM",
            "SyDMAScliyLx7F0NPDEJi1QmyCgHIAODrlU",
            "SyD3asb-2pEZVqMkmL6M9N6nHZRR_znhrh0",
            "yDNSXIbFmlXbIE6mCzDLQAqITYefhixbX4A",
            "SyAdOS2zB6NCsk1pCdZ4-P6GBdi_UUPwX7c",
            "SyASWm6HmTMdYWpgMnjRBjxcQ9CKctWmLd4",
            "SyANUvH9H9BsUccjsu2pCmEkOPjjaXeDQgY",
            "SyA5_iVawFQ8ABuTZNUdcwERLJv_a_p4wtM",
            "SyA4UrcGxgwQFTfaI3no3t7Lt1sjmdnP5sQ",
            "SyDSb51JiIcB6OJpwwMicseKRhhrOq1cS7g",
            "SyBF2RrAIm4a0mO64EShQfqfd2AFnzAvvuU",
            "SyBcE-OOIbhjyR83gm4r2MFCu4MJmprNXsw",
            "SyB8qGxt4ec15vitgn44duC5ucxaOi4FmqE",
            "SyA8vmApnrHNFE0bApF4hoZ11srVL_n0nvY",
        )
    )
    + ")$",
)
# A value that is code, not a literal: `self.password`, `settings.DB_PASSWORD`, `os.environ`.
_CODE_REFERENCE = r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$"
# An unquoted value made of letters only is a variable in code (`self.password = credentials`).
_UNQUOTED_WORD = r"[=:][ \t]*[A-Za-z_]+(?:[\s,;]|\\[nrt])?$"
_PLACEHOLDERS = (
    r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$",
    r"^<[^>]*>$",
    r"^\{\{.*\}\}$",
    r"^(?:\*+|x+|X+|\.+)$",
    r"(?i)^(?:changeme|password|secret|example|redacted|none|null|undefined)",
)


def _secret(
    rule_id: str,
    severity: str,
    description: str,
    regex: str,
    keywords: tuple[str, ...],
    *,
    entropy: float | None = 1.5,
    allowlist: tuple[str, ...] = (),
    validator: str | None = None,
    match_allowlist: tuple[str, ...] = (),
) -> DlpRule:
    """A credential detector. A minimum entropy and the placeholder allowlist keep documented
    examples (`AKIAIOSFODNN7EXAMPLE`, `ghp_xxxx…`) from firing, as gitleaks and detect-secrets do."""
    return DlpRule(
        id=rule_id,
        severity=severity,
        category="secret",
        description=description,
        regex=regex,
        keywords=keywords,
        entropy=entropy,
        secret_group=1,
        allowlist_regexes=allowlist + _PLACEHOLDER_SECRET,
        validator=validator,
        allowlists=(DlpAllowlist(regexes=match_allowlist, target="match"),) if match_allowlist else (),
    )


def _pii(
    rule_id: str,
    severity: str,
    description: str,
    regex: str,
    keywords: tuple[str, ...] = (),
    *,
    validator: str | None = None,
) -> DlpRule:
    return DlpRule(
        id=rule_id,
        severity=severity,
        category="pii",
        description=description,
        regex=regex,
        keywords=keywords,
        validator=validator,
        secret_group=1,
    )


def _provider_rules() -> list[DlpRule]:
    return [
        _secret(
            "openai-project-key",
            "critical",
            "OpenAI project API key",
            _START + r"(sk-proj-[A-Za-z0-9_-]{40,250})" + _END_URLSAFE,
            ("sk-proj-",),
        ),
        _secret(
            "openai-service-account-key",
            "critical",
            "OpenAI service account key",
            _START + r"(sk-svcacct-[A-Za-z0-9_-]{40,250})" + _END_URLSAFE,
            ("sk-svcacct-",),
        ),
        _secret(
            "openai-admin-key",
            "critical",
            "OpenAI admin key",
            _START + r"(sk-admin-[A-Za-z0-9_-]{40,250})" + _END_URLSAFE,
            ("sk-admin-",),
        ),
        _secret(
            "openai-legacy-api-key",
            "critical",
            "OpenAI user API key (legacy format)",
            _START + r"(sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})\b",
            ("t3blbkfj",),
        ),
        _secret(
            "anthropic-api-key",
            "critical",
            "Anthropic API key",
            _START + r"(sk-ant-api03-[A-Za-z0-9_-]{93}AA)" + _END_URLSAFE,
            ("sk-ant-api03-",),
        ),
        _secret(
            "anthropic-admin-key",
            "critical",
            "Anthropic admin API key",
            _START + r"(sk-ant-admin01-[A-Za-z0-9_-]{93}AA)" + _END_URLSAFE,
            ("sk-ant-admin01-",),
        ),
        _secret(
            "google-api-key",
            "high",
            "Google API key",
            _START + r"(AIza[0-9A-Za-z_-]{35})" + _END_URLSAFE,
            ("aiza",),
            allowlist=_PUBLIC_GOOGLE_KEYS,
        ),
        _secret(
            "google-oauth-client-secret",
            "critical",
            "Google OAuth client secret",
            _START + r"(GOCSPX-[A-Za-z0-9_-]{28})" + _END_URLSAFE,
            ("gocspx-",),
        ),
        _secret(
            "aws-access-key-id",
            "high",
            "AWS access key id",
            _START + r"((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
            ("akia", "asia", "abia", "acca", "a3t"),
        ),
        _secret(
            "aws-bedrock-api-key",
            "critical",
            "AWS Bedrock API key (long-lived ABSK or short-lived bedrock-api-key)",
            _START
            + r"(ABSK[A-Za-z0-9+/]{109,269}={0,2}"
            + r"|bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/=%_-]{20,1000})"
            + r"(?:[^A-Za-z0-9+/=%_-]|$)",
            ("absk", "bedrock-api-key-"),
        ),
        _secret(
            "aws-secret-access-key",
            "critical",
            "AWS secret access key assigned to a named variable",
            r"(?i)(?:aws_?)?secret_?access_?key" + _ASSIGN + r"([A-Za-z0-9/+]{40})" + _END_B64,
            ("secret_access_key", "secretaccesskey", "secret_accesskey", "secretaccess_key"),
            entropy=3.5,
        ),
        _secret(
            "aws-secret-key-near-key-id",
            "critical",
            "AWS secret access key next to an access key id",
            _START + r"(?:AKIA|ASIA)[A-Z2-7]{16}\b[^\n]{0,80}?[^A-Za-z0-9/+]([A-Za-z0-9/+]{40})" + _END_B64,
            ("akia", "asia"),
            entropy=4.0,
        ),
        _secret(
            "azure-storage-account-key",
            "critical",
            "Azure storage account key in a connection string",
            r"(?i)AccountKey=[\"']?([A-Za-z0-9+/]{86}==)",
            ("accountkey=",),
        ),
        _secret(
            "azure-shared-access-key",
            "critical",
            "Azure Service Bus / Event Hubs shared access key",
            r"(?i)SharedAccessKey=([A-Za-z0-9+/]{43}=)",
            ("sharedaccesskey=",),
        ),
        _secret(
            "azure-sas-token",
            "high",
            "Azure shared access signature",
            r"(?i)\bsv=\d{4}-\d{2}-\d{2}&[^\s\"'<>]{0,300}?\bsig=([A-Za-z0-9%+/]{30,100})",
            ("sv=",),
        ),
        _secret(
            "azure-ad-client-secret",
            "critical",
            "Azure AD (Entra ID) client secret",
            r"(?:^|[\\'\"\x60\s>=:(,)])([a-zA-Z0-9_~.]{3}\dQ~[a-zA-Z0-9_~.-]{31,34})(?:$|[\\'\"\x60\s<),])",
            ("q~",),
        ),
        _secret(
            "github-pat",
            "critical",
            "GitHub personal access token (classic)",
            _START + r"(ghp_[A-Za-z0-9]{36})\b",
            ("ghp_",),
        ),
        _secret(
            "github-oauth-token",
            "critical",
            "GitHub OAuth access token",
            _START + r"(gho_[A-Za-z0-9]{36})\b",
            ("gho_",),
        ),
        _secret(
            "github-user-to-server-token",
            "critical",
            "GitHub user-to-server token",
            _START + r"(ghu_[A-Za-z0-9]{36})\b",
            ("ghu_",),
        ),
        _secret(
            "github-app-token",
            "critical",
            "GitHub app installation token",
            _START + r"(ghs_[A-Za-z0-9]{36})\b",
            ("ghs_",),
        ),
        _secret(
            "github-refresh-token",
            "critical",
            "GitHub refresh token",
            _START + r"(ghr_[A-Za-z0-9]{36})\b",
            ("ghr_",),
        ),
        _secret(
            "github-fine-grained-pat",
            "critical",
            "GitHub fine-grained personal access token",
            _START + r"(github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b",
            ("github_pat_",),
        ),
        _secret(
            "gitlab-pat",
            "critical",
            "GitLab personal access token",
            _START + r"(glpat-[A-Za-z0-9_.-]{20,300})" + r"(?:[^A-Za-z0-9_.-]|$)",
            ("glpat-",),
        ),
        _secret(
            "gitlab-deploy-token",
            "critical",
            "GitLab deploy token",
            _START + r"(gldt-[A-Za-z0-9_-]{20,64})" + _END_URLSAFE,
            ("gldt-",),
        ),
        _secret(
            "gitlab-runner-token",
            "critical",
            "GitLab runner authentication token",
            _START + r"(glrt-[A-Za-z0-9_.-]{20,300})" + r"(?:[^A-Za-z0-9_.-]|$)",
            ("glrt-",),
        ),
        _secret(
            "gitlab-pipeline-trigger-token",
            "high",
            "GitLab pipeline trigger token",
            _START + r"(glptt-[0-9a-f]{40})\b",
            ("glptt-",),
        ),
        _secret(
            "gitlab-scim-token",
            "high",
            "GitLab SCIM token",
            _START + r"(glsoat-[A-Za-z0-9_-]{20})" + _END_URLSAFE,
            ("glsoat-",),
        ),
        _secret(
            "gitlab-other-token",
            "critical",
            "GitLab CI job, incoming mail, agent, OAuth app or runner registration token",
            _START
            + r"(glcbt-[0-9a-zA-Z]{1,5}_[0-9a-zA-Z_-]{20}|glimt-[0-9a-zA-Z_-]{25}|glagent-[0-9a-zA-Z_-]{50}"
            + r"|gloas-[0-9a-zA-Z_-]{64}|GR1348941[0-9a-zA-Z_-]{20})"
            + _END_URLSAFE,
            ("glcbt-", "glimt-", "glagent-", "gloas-", "gr1348941"),
            entropy=3.0,
        ),
        _secret(
            "gitlab-feed-token",
            "medium",
            "GitLab feed token",
            _START + r"(glft-[A-Za-z0-9_-]{20})" + _END_URLSAFE,
            ("glft-",),
        ),
        _secret(
            "slack-bot-token",
            "critical",
            "Slack bot token",
            _START + r"(xoxb-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,34})\b",
            ("xoxb-",),
        ),
        _secret(
            "slack-legacy-token",
            "critical",
            "Slack legacy token (xoxb, xoxs, xoxo, xoxa, xoxr)",
            _START
            + r"(xoxb-[0-9]{8,14}-[A-Za-z0-9]{18,26}|xox[osparb]-(?:[0-9]-)?[0-9]+-[0-9]+-[0-9]+-[a-fA-F0-9]+"
            + r"|xox[ar]-(?:[0-9]-)?[0-9a-zA-Z]{8,48})\b",
            ("xoxb-", "xoxs-", "xoxo-", "xoxa-", "xoxr-", "xoxp-"),
            entropy=2.0,
        ),
        _secret(
            "slack-config-token",
            "critical",
            "Slack app configuration access or refresh token (xoxe)",
            r"(?i)" + _START + r"(xoxe\.xox[bp]-[0-9]-[A-Z0-9]{163,166}|xoxe-[0-9]-[A-Z0-9]{146})\b",
            ("xoxe",),
            entropy=2.0,
        ),
        _secret(
            "slack-user-token",
            "critical",
            "Slack user token",
            _START + r"(xox[pe](?:-[0-9]{10,13}){3}-[A-Za-z0-9-]{28,34})" + _END_URLSAFE,
            ("xoxp-", "xoxe-"),
        ),
        _secret(
            "slack-app-token",
            "critical",
            "Slack app-level token",
            r"(?i)(?:^|[^A-Za-z0-9_]|\\[nrt])(xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+)\b",
            ("xapp-",),
        ),
        _secret(
            "slack-webhook-url",
            "high",
            "Slack incoming webhook URL",
            r"((?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56})",
            ("hooks.slack.com",),
        ),
        _secret(
            "stripe-live-secret-key",
            "critical",
            "Stripe live secret or restricted key",
            _START + r"((?:sk|rk)_live_[A-Za-z0-9]{20,247})\b",
            ("sk_live_", "rk_live_"),
        ),
        _secret(
            "stripe-test-secret-key",
            "medium",
            "Stripe test-mode secret or restricted key",
            _START + r"((?:sk|rk)_test_[A-Za-z0-9]{20,247})\b",
            ("sk_test_", "rk_test_"),
        ),
        _secret(
            "stripe-webhook-secret",
            "high",
            "Stripe webhook signing secret",
            _START + r"(whsec_[A-Za-z0-9]{32,64})\b",
            ("whsec_",),
        ),
        _secret("twilio-api-key", "high", "Twilio API key SID", _START + r"(SK[0-9a-f]{32})\b", ("sk",)),
        _secret(
            "sendgrid-api-key",
            "critical",
            "SendGrid API key",
            _START + r"(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})" + _END_URLSAFE,
            ("sg.",),
        ),
        _secret(
            "npm-access-token", "critical", "npm access token", _START + r"(npm_[A-Za-z0-9]{36})\b", ("npm_",)
        ),
        _secret(
            "npm-registry-auth",
            "critical",
            "npm registry credential in an .npmrc line (_authToken or _auth)",
            r"(?i)//[^\s/:]+(?:/[^\s:]*)?/:_auth(?:token)?=[ \t]?([^\s\x60'\"${}]{6,512})",
            (":_auth",),
        ),
        _secret(
            "pypi-upload-token",
            "critical",
            "PyPI upload token",
            _START
            + r"(pypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,1000})"
            + _END_URLSAFE,
            ("pypi-ageichlwas5vcmc", "pypi-agendgvzdc5wexbplm9yzw"),
        ),
        _secret(
            "huggingface-access-token",
            "critical",
            "Hugging Face access token",
            _START + r"(hf_[A-Za-z]{34})\b",
            ("hf_",),
        ),
        _secret(
            "huggingface-org-token",
            "critical",
            "Hugging Face organization API token",
            _START + r"(api_org_[A-Za-z]{34})\b",
            ("api_org_",),
        ),
        _secret(
            "mailgun-api-key", "high", "Mailgun private API key", _START + r"(key-[0-9a-f]{32})\b", ("key-",)
        ),
        _secret(
            "mailchimp-api-key",
            "high",
            "Mailchimp API key",
            _START + r"([0-9a-f]{32}-us[0-9]{1,2})\b",
            ("-us",),
        ),
        _secret(
            "shopify-token",
            "critical",
            "Shopify access token / shared secret",
            _START + r"(shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32})\b",
            ("shpat_", "shpss_", "shpca_", "shppa_"),
        ),
        _secret(
            "datadog-api-key",
            "high",
            "Datadog API or application key assigned to a named variable",
            r"(?i)(?:datadog|dd)[_-]?(?:api|app)[_-]?key" + _ASSIGN + r"([a-f0-9]{40}|[a-f0-9]{32})\b",
            ("datadog", "dd_api", "dd-api", "ddapi", "dd_app", "dd-app", "ddapp"),
        ),
        _secret(
            "digitalocean-pat",
            "critical",
            "DigitalOcean personal access token",
            _START + r"(dop_v1_[a-f0-9]{64})\b",
            ("dop_v1_",),
        ),
        _secret(
            "digitalocean-oauth-token",
            "critical",
            "DigitalOcean OAuth token",
            _START + r"(doo_v1_[a-f0-9]{64})\b",
            ("doo_v1_",),
        ),
        _secret(
            "digitalocean-refresh-token",
            "high",
            "DigitalOcean refresh token",
            _START + r"(dor_v1_[a-f0-9]{64})\b",
            ("dor_v1_",),
        ),
        _secret(
            "discord-bot-token",
            "critical",
            "Discord bot token",
            _START + r"([MNO][A-Za-z0-9]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38})" + _END_URLSAFE,
            (),
            entropy=4.0,
        ),
        _secret(
            "discord-webhook-url",
            "high",
            "Discord webhook URL",
            r"(discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,68})" + _END_URLSAFE,
            ("discord",),
        ),
        _secret(
            "telegram-bot-token",
            "critical",
            "Telegram bot API token",
            r"(?:^|[^0-9])([0-9]{8,10}:AA[A-Za-z0-9_-]{33})" + _END_URLSAFE,
            (":aa",),
        ),
        _secret(
            "doppler-token",
            "critical",
            "Doppler API token",
            _START + r"(dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44})\b",
            ("dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."),
        ),
        _secret(
            "databricks-api-token",
            "critical",
            "Databricks personal access token",
            _START + r"(dapi[a-f0-9]{32}(?:-[0-9])?)\b",
            ("dapi",),
        ),
        _secret(
            "linear-api-key", "high", "Linear API key", _START + r"(lin_api_[A-Za-z0-9]{40})\b", ("lin_api_",)
        ),
        _secret(
            "notion-api-token",
            "high",
            "Notion integration token",
            _START + r"(ntn_[0-9]{11}[A-Za-z0-9]{35}|secret_[A-Za-z0-9]{43})\b",
            ("ntn_", "secret_"),
        ),
        _secret(
            "postman-api-key",
            "high",
            "Postman API key",
            _START + r"(PMAK-[a-f0-9]{24}-[a-f0-9]{34})\b",
            ("pmak-",),
        ),
        _secret(
            "vault-service-token",
            "critical",
            "HashiCorp Vault service token",
            _START + r"(hvs\.[A-Za-z0-9_-]{24,120})" + _END_URLSAFE,
            ("hvs.",),
        ),
        _secret(
            "vault-legacy-token",
            "high",
            "HashiCorp Vault service token (legacy s. format)",
            r"(?:^|[^A-Za-z0-9_.]|\\[nrt])(s\.[A-Za-z0-9]{24,64})(?:[^A-Za-z0-9_.-]|$)",
            ("s.",),
            entropy=3.5,
            validator="mixed_token",
        ),
        _secret(
            "terraform-cloud-token",
            "critical",
            "Terraform Cloud / Enterprise API token",
            _START + r"([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70})" + r"(?:[^A-Za-z0-9_=-]|$)",
            (".atlasv1.",),
        ),
        _secret(
            "vault-batch-token",
            "critical",
            "HashiCorp Vault batch token",
            _START + r"(hvb\.[A-Za-z0-9_-]{138,300})" + _END_URLSAFE,
            ("hvb.",),
        ),
        _secret(
            "atlassian-api-token",
            "critical",
            "Atlassian API token",
            _START + r"(ATATT3[A-Za-z0-9_=-]{186})" + r"(?:[^A-Za-z0-9_=-]|$)",
            ("atatt3",),
        ),
        _secret(
            "age-secret-key",
            "critical",
            "age encryption secret key",
            _START + r"(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b",
            ("age-secret-key-1",),
        ),
        _secret(
            "grafana-service-account-token",
            "critical",
            "Grafana service account token",
            _START + r"(glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})\b",
            ("glsa_",),
        ),
        _secret(
            "grafana-cloud-token",
            "critical",
            "Grafana Cloud API token",
            _START + r"(glc_[A-Za-z0-9+/]{32,400}={0,2})" + _END_B64,
            ("glc_",),
        ),
        _secret(
            "grafana-api-key",
            "high",
            "Grafana API key (legacy format)",
            _START + r"(eyJrIjoi[A-Za-z0-9]{70,400}={0,3})" + _END_B64,
            ("eyjrijoi",),
        ),
        _secret(
            "new-relic-user-api-key",
            "high",
            "New Relic user API key",
            _START + r"(NRAK-[A-Z0-9]{27})\b",
            ("nrak-",),
        ),
        _secret(
            "new-relic-insert-key",
            "high",
            "New Relic insert key",
            _START + r"(NRII-[A-Za-z0-9_-]{32})" + _END_URLSAFE,
            ("nrii-",),
        ),
        _secret(
            "sentry-org-token",
            "high",
            "Sentry organization auth token",
            _START + r"(sntrys_eyJpYXQiO[A-Za-z0-9+/=_-]{80,400})" + r"(?:[^A-Za-z0-9+/=_-]|$)",
            ("sntrys_",),
        ),
        _secret(
            "sentry-user-token",
            "high",
            "Sentry user auth token",
            _START + r"(sntryu_[a-f0-9]{64})\b",
            ("sntryu_",),
        ),
        _secret(
            "square-access-token",
            "critical",
            "Square access token",
            _START + r"(sq0atp-[A-Za-z0-9_-]{22}|EAAA[A-Za-z0-9_-]{60})" + _END_URLSAFE,
            ("sq0atp-", "eaaa"),
        ),
        _secret(
            "square-oauth-secret",
            "critical",
            "Square OAuth application secret",
            _START + r"(sq0csp-[A-Za-z0-9_-]{43})" + _END_URLSAFE,
            ("sq0csp-",),
        ),
        _secret(
            "heroku-api-key",
            "critical",
            "Heroku platform API key",
            _START + r"(HRKU-AA[A-Za-z0-9_-]{58})" + _END_URLSAFE,
            ("hrku-aa",),
        ),
        _secret(
            "pulumi-access-token",
            "critical",
            "Pulumi access token",
            _START + r"(pul-[a-f0-9]{40})\b",
            ("pul-",),
        ),
        _secret(
            "rubygems-api-key",
            "critical",
            "RubyGems API key",
            _START + r"(rubygems_[a-f0-9]{48})\b",
            ("rubygems_",),
        ),
        _secret(
            "flyio-token",
            "critical",
            "Fly.io access token",
            _START
            + r"(fo1_[A-Za-z0-9_-]{43}|fm1[ar]_[A-Za-z0-9+/]{100,1000}={0,3}"
            + r"|fm2_[A-Za-z0-9+/]{100,1000}={0,3})"
            + r"(?:[^A-Za-z0-9+/=_-]|$)",
            ("fo1_", "fm1r_", "fm1a_", "fm2_"),
        ),
        _secret(
            "perplexity-api-key",
            "critical",
            "Perplexity API key",
            _START + r"(pplx-[A-Za-z0-9]{48})\b",
            ("pplx-",),
        ),
        _secret("groq-api-key", "critical", "Groq API key", _START + r"(gsk_[A-Za-z0-9]{52})\b", ("gsk_",)),
        _secret("xai-api-key", "critical", "xAI API key", _START + r"(xai-[A-Za-z0-9]{80})\b", ("xai-",)),
        _secret(
            "replicate-api-token",
            "critical",
            "Replicate API token",
            _START + r"(r8_[A-Za-z0-9]{37})\b",
            ("r8_",),
        ),
    ]


def _structural_rules() -> list[DlpRule]:
    return [
        _secret(
            "private-key",
            "critical",
            "PEM private key block",
            r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{64}[\s\S]*?"
            r"-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|[\sA-Za-z0-9+/=:,-]{64,}))",
            ("private key",),
        ),
        _secret(
            "jwt",
            "high",
            "JSON Web Token",
            _START
            + r"(eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]{10,})?)"
            + _END_URLSAFE,
            ("eyj",),
        ),
        _secret(
            "jwt-base64",
            "high",
            "Base64-wrapped JSON Web Token",
            _START
            + r"(ZXlK[A-Za-z0-9+/_-]{20,}[A-Za-z0-9+/_-]*(?:LmV5S|uZXlK|C5leUo)[A-Za-z0-9+/_-]{20,}={0,2})"
            + r"(?:[^A-Za-z0-9+/=_-]|$)",
            ("zxlk",),
        ),
        _secret(
            "url-credentials",
            "high",
            "Password embedded in a URL",
            r"\b[a-z][a-z0-9+.-]{1,20}://[^/\s:@\"'<>]{1,64}:([^/\s:@\"'<>]{3,128})@[A-Za-z0-9.-]+",
            ("://",),
            entropy=None,
            allowlist=_PLACEHOLDERS,
        ),
        _secret(
            "generic-password-assignment",
            "high",
            "Password assigned in code or configuration",
            r"(?i)(?:\b|_)(?:password|passwd|pwd|passphrase)"
            + _ASSIGN
            + r"([^\s\x60'\",;\\(){}\[\]<>]{8,128})"
            + r"(?:[\s\x60'\",;]|\\[nrt]|$)",
            ("password", "passwd", "pwd", "passphrase"),
            entropy=3.0,
            allowlist=(*_PLACEHOLDERS, _CODE_REFERENCE),
            match_allowlist=(_UNQUOTED_WORD,),
        ),
        _secret(
            "generic-secret-assignment",
            "high",
            "Secret or token assigned in code or configuration",
            r"(?i)\b(?:client_secret|secret_key|secret|auth_token|access_token|api_token)"
            + _ASSIGN
            + r"([A-Za-z0-9_+/=.-]{16,256})",
            ("secret", "token"),
            entropy=3.5,
            allowlist=_PLACEHOLDERS,
        ),
        _secret(
            "generic-api-key-assignment",
            "high",
            "API key assigned in code or configuration",
            r"(?i)\b(?:x-api-key|api[_-]?key)" + _ASSIGN + r"([A-Za-z0-9_+/=.-]{16,256})",
            ("x-api-key", "api_key", "api-key", "apikey"),
            entropy=3.5,
            allowlist=_PLACEHOLDERS,
        ),
    ]


def _pii_rules() -> list[DlpRule]:
    return [
        _pii(
            "email-address",
            "low",
            "Email address",
            _START + r"([A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24})\b",
            ("@",),
        ),
        _pii(
            "phone-number-e164",
            "low",
            "Phone number in E.164 format",
            r"(?:^|[^\w+])(\+[1-9][0-9]{7,14})(?:[^\w.-]|$)",
            ("+",),
        ),
        _pii(
            "phone-number-nanp",
            "low",
            "North American phone number with separators",
            r"(?:^|[^\w.-])(\(?[2-9][0-9]{2}\)?[-. ][2-9][0-9]{2}[-. ][0-9]{4})(?:[^\w.-]|$)",
        ),
        _pii(
            "credit-card-number",
            "high",
            "Payment card number (Luhn and IIN checked)",
            r"(?:^|[^\w.-])((?:[0-9][ -]?){12,18}[0-9])(?:[^\w.-]|$)",
            validator="luhn",
        ),
        _pii(
            "iban",
            "medium",
            "International bank account number (mod-97 checked)",
            _START + r"([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)\b",
            validator="iban",
        ),
        _pii(
            "us-ssn",
            "high",
            "US social security number",
            r"(?:^|[^\w-])([0-9]{3}-[0-9]{2}-[0-9]{4})(?:[^\w-]|$)",
            validator="ssn",
        ),
    ]


def builtin_rules() -> list[DlpRule]:
    return _provider_rules() + _structural_rules() + _pii_rules()


def policy_rules(policy: Policy) -> tuple[DlpRule, ...] | None:
    """The rules a policy's DLP engine is built from (failcore.dlp.scanner); None when its DLP is off."""
    settings = policy.dlp
    if not settings.enabled:
        return None
    return (*builtin_rules(), *settings.gitleaks_rules, *settings.custom_rules)
