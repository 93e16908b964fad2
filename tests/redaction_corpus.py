# ruff: noqa: E501  (one case per line reads best; the keys are long)
"""The redaction corpus: one case per secret format and structure, and the ordinary text that must stay.

Every key here is a public example or made up (AWS's documented AKIAIOSFODNN7EXAMPLE and
wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, tokens of the right shape spelled EXAMPLE), never a
real one; prefixes are split (``"npm" "_..."``) so that push-protection scanners leave the file alone.

A positive case lists the secret substrings that must not survive ``redact``; a negative case has
none, and its text must come back unchanged. ``tests/test_redaction.py`` runs them all, and
``scripts/bench_redact.py`` prints recall and false positives over them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    secrets: tuple[str, ...] = ()  # empty: a negative case, to be left unchanged


AWS_ID = "AKIA" "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" "bPxRfiCYEXAMPLEKEY"
NPM = "npm" "_EXAMPLE0a1b2c3d4e5f6g7h8i9j0k1l2m3n4"
GITHUB = "ghp" "_EXAMPLEa1B2c3D4e5F6g7H8i9J0k1L2m3N4"
GOOGLE = "AIza" "SyEXAMPLE1234567890abcdefghijklmnop"
SLACK = "xox" "b-000000000000-EXAMPLEEXAMPLE"
STRIPE = "sk_" "test_EXAMPLE4eC39HqLyjWDarjtT1zdp7dc"
PYPI = "pypi-" "AgEIcHlwaS5vcmcEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE0"
HF = "hf" "_EXAMPLEabcdefghijklmnopqrstuvwxyz12"
JWT = "eyJhbGciOiJIUzI1NiJ9" ".eyJzdWIiOiIxMjM0NTY3ODkwIn0" ".EXAMPLEsignature0123456789"
PEM_BODY = "MIIEowIBAAKCAQEAexampleexampleexampleexampleexampleexample0123\nZXhhbXBsZWV4YW1wbGVleGFtcGxlZXhhbXBsZWV4YW1wbGVleGFtcGxlZXhh"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"

POSITIVE = [
    # formats with a fixed shape
    Case("aws-access-key-id", f"aws_access_key_id = {AWS_ID}", (AWS_ID,)),
    Case("aws-credentials-file", f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n", (AWS_ID, AWS_SECRET)),
    Case("aws-secret-env", f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", (AWS_SECRET,)),
    Case("aws-secret-json", f'{{"SecretAccessKey": "{AWS_SECRET}"}}', (AWS_SECRET,)),
    Case("npm-token-bare", f"the token is {NPM}", (NPM,)),
    Case("npmrc-authtoken", "//registry.npmjs.org/:_authToken=Ex4mpleT0kenValue123\n", ("Ex4mpleT0kenValue123",)),
    Case("npmrc-authtoken-npm", f"//registry.npmjs.org/:_authToken={NPM}\n", (NPM,)),
    Case("github-token", f"git push https://{GITHUB}@github.com/o/r", (GITHUB,)),
    Case("google-api-key", f"key={GOOGLE}", (GOOGLE,)),
    Case("slack-token", f"SLACK={SLACK}", (SLACK,)),
    Case("stripe-key", f"stripe.api_key = {STRIPE}", (STRIPE,)),
    Case("pypi-token", f"password = {PYPI}", (PYPI,)),
    Case("huggingface-token", f"huggingface-cli login --token {HF}", (HF,)),
    Case("jwt", f"cookie {JWT}", (JWT,)),
    Case("pem-block", f"key:\n{PEM}\nafter", ("MIIEowIBAAKCAQEA", "ZXhhbXBsZWV4YW1w")),
    Case("pem-head-half", f"start\n-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}", ("MIIEowIBAAKCAQEA", "ZXhhbXBsZWV4YW1w")),
    Case("pem-tail-half", f"{PEM_BODY}\n-----END PRIVATE KEY-----\nrest", ("MIIEowIBAAKCAQEA", "ZXhhbXBsZWV4YW1w")),
    Case("pem-tail-after-text", f"the key data\n{PEM_BODY}\n-----END PRIVATE KEY-----", ("MIIEowIBAAKCAQEA", "ZXhhbXBsZWV4YW1w")),
    Case("pem-tail-crlf", PEM_BODY.replace("\n", "\r\n") + "\r\n-----END EC PRIVATE KEY-----\r\n", ("MIIEowIBAAKCAQEA", "ZXhhbXBsZWV4YW1w")),
    # values by context
    Case("yaml-unquoted", "database:\n  user: app\n  password: hunter2x\n", ("hunter2x",)),
    Case("yaml-list-item", "- password: S3cr3t-pw!\n", ("S3cr3t-pw!",)),
    Case("yaml-token-key", "api_token: 0123abcd4567ef\n", ("0123abcd4567ef",)),
    Case("ini-unquoted", "[db]\npassword = Tr0ub4dor&3\n", ("Tr0ub4dor",)),
    Case("ini-colon-spring", "spring.datasource.password=pa55word!\n", ("pa55word!",)),
    Case("env-trailing-comment", "DB_PASSWORD=s3cr3tvalue # prod only\n", ("s3cr3tvalue",)),
    Case("env-quoted", "GITHUB_TOKEN='my-quoted-token-1'\n", ("my-quoted-token-1",)),
    Case("env-export", "export API_KEY=abc123def456\n", ("abc123def456",)),
    Case("env-prefix-command", "API_TOKEN=tok3n-value-9 ./deploy.sh --prod", ("tok3n-value-9",)),
    Case("env-prefix-two", "PGPASSWORD=pgs3cret psql -h db", ("pgs3cret",)),
    Case("libpq-keywords", "host=db.example port=5432 password=libpqS3cret dbname=app", ("libpqS3cret",)),
    Case("libpq-quoted", "psycopg.connect(\"host=db user=app password=k3yw0rd! dbname=app\")", ("k3yw0rd!",)),
    Case("python-quoted", 'password = "hunter2-literal"', ("hunter2-literal",)),
    Case("python-kwarg-literal", 'connect(user="a", password="pw-literal-1")', ("pw-literal-1",)),
    Case("json-nested-text", '{"db": {"password": "json-pw-123"}}', ("json-pw-123",)),
    Case("go-walrus", 'secret := "g0-s3cret-value"', ("g0-s3cret-value",)),
    Case("url-password", "postgresql://bob:s3cret@db.example:5432/kb", ("s3cret",)),
    Case("url-password-slash", "postgresql://bob:pa/ss@w0rd@db.example:5432/kb", ("pa/ss@w0rd", "pa/ss")),
    Case("url-password-at", "redis://:p@ssw0rd@cache:6379/0", ("p@ssw0rd",)),
    Case("curl-user", "curl -u bob:curlpassw0rd https://api.example/x", ("curlpassw0rd",)),
    Case("curl-user-long", "curl --user 'bob:curl pw!' https://x", ("curl pw!", " pw!")),
    Case("header-api-key", "curl -H 'X-Api-Key: 0123456789abcdef' https://x", ("0123456789abcdef",)),
    Case("header-auth-token", "X-Auth-Token: tok-0123456789\nAccept: */*", ("tok-0123456789",)),
    Case("header-private-token", "Private-Token: glpat-EXAMPLE", ("glpat-EXAMPLE",)),
    Case("header-authorization-raw", "Authorization: 0123456789abcdef0123", ("0123456789abcdef0123",)),
    Case("header-bearer", "Authorization: Bearer abcdefghijklmnop1234", ("abcdefghijklmnop1234",)),
    Case("mysql-p", "mysql -u root -pMyS3cret db", ("MyS3cret",)),
    Case("mysql-p-short", "mysqldump -uroot -pX9 app > dump.sql", ("-pX9",)),
    Case("mysql-p-quoted", "mysql -u root '-pMy S3cret' db", ("My S3cret", "S3cret")),
    Case("sshpass", "sshpass -p 'sshS3cret' ssh host", ("sshS3cret",)),
    Case("flag-split", "deploy --password hunter2x --host h", ("hunter2x",)),
    Case("flag-equals", "tool --api-key=Y0urApiKey123", ("Y0urApiKey123",)),
    Case("flag-quoted-join", "tool '--client-secret=a b c d' x", ("a b c d",)),
    Case("flag-quoted-value", "tool --token 'Sp4ced tok3n value'", ("Sp4ced tok3n value", "Sp4ced")),
    Case("netrc-one-line", "machine api.example login bob password n3trcS3cret", ("n3trcS3cret",)),
    Case("netrc-lines", "machine api.example\n  login bob\n  password n3trc-S3cret\n", ("n3trc-S3cret",)),
    Case("pgpass-line", "db.example:5432:app:bob:pgp4ssS3cret\n*:*:*:bob:other-pw-1", ("pgp4ssS3cret",)),
    Case("docker-login-p", "docker login -u bob -p d0ckerS3cret registry.example", ("d0ckerS3cret",)),
    Case("azure-account-key", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=EXAMPLEa1b2c3d4e5f6g7h8==;", ("EXAMPLEa1b2c3d4e5f6g7h8",)),
    Case("constant-key-random", "SENTRY_KEY=EXAMPLE0a1b2c3d4e5f6a7b8c9d0", ("EXAMPLE0a1b2c3d4e5f6a7b8c9d0",)),
    Case("google-client-secret", "client_id=x client: " + "GOCSPX" "-EXAMPLEabcdefghijklmnopqrstu", ("GOCSPX-EXAMPLEabcdefghijklmnopqrstu",)),
    Case("telegram-bot-token", "https://api.telegram.org/bot123456789:" "AAEXAMPLEabcdefghijklmnopqrstuvwxyz/getMe", ("AAEXAMPLEabcdefghijklmnopqrstuvwxyz",)),
    Case("doc-example-password", 'create_engine(url, password="tiger")', ("tiger",)),
    Case("docker-login", "docker login -u me --password dckrS3cret1 registry", ("dckrS3cret1",)),
]

NEGATIVE = [
    Case("code-password-field", "password_field = models.CharField(max_length=128)"),
    Case("code-token-next", "token = next(tokens)"),
    Case("code-getpass", "password = getpass()"),
    Case("code-getpass-module", "password = getpass.getpass('Password: ')"),
    Case("code-environ", 'api_key = os.environ["API_KEY"]'),
    Case("code-getenv", 'token = os.getenv("GITHUB_TOKEN")'),
    Case("code-same-name-kwarg", "client = Client(api_key=api_key, token=token)"),
    Case("code-attribute", "password = args.password"),
    Case("code-self", "self.token = token"),
    Case("code-annotation", "    password: str\n    token: str | None = None\n"),
    Case("code-optional", "api_key: Optional[str] = None"),
    Case("code-ts-type", "  password: string;"),
    Case("code-none", "secret = None"),
    Case("code-empty", 'password = ""'),
    Case("code-compare", "if token == other_token:"),
    Case("code-variable", "token = result"),
    Case("code-kwarg-variable", "login(user, password=hashed)"),
    Case("code-index", "token = tokens[i]"),
    Case("code-await", "token = await fetch_token()"),
    Case("code-token-count", "token_count = 5\nmax_tokens: 1000\nprompt_tokens=12"),
    Case("code-tokenizer", "tokenizer = AutoTokenizer.from_pretrained(name)"),
    Case("code-method", "token = lexer.next_token()"),
    Case("code-flag-stdin", "docker login --password-stdin < pw.txt"),
    Case("code-flag-file", "gh auth --token-file ~/.tok"),
    Case("code-argparse", 'parser.add_argument("--password", help="the password")'),
    Case("placeholder-env", "password: ${DB_PASSWORD}\ntoken = $GITHUB_TOKEN\n"),
    Case("placeholder-angle", "API_KEY=<your-api-key>"),
    Case("placeholder-stars", "password = ********"),
    Case("template-jinja", "password: {{ vault_password }}"),
    Case("lock-hash", 'integrity sha512-Q8z9ULUzs3QKqlLu1Vf4y3hcRP8Kgx0fJTF3x2V8b8Yzo0p7vK5yM2Q3nLHk2Sx9T1o+q4w6dkLFq1qZT3o8Ww=='),
    Case("lock-sha256", 'hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"'),
    Case("uuid", "request 123e4567-e89b-12d3-a456-426614174000 done"),
    Case("git-sha", "commit 01ea355c1f6b1f0b7f8e9d2a3c4b5d6e7f8091a2b"),
    Case("url-no-password", "https://user@github.com/o/r.git and postgresql://db.example/kb"),
    Case("url-placeholder", "mysql+pymysql://<username>:<password>@<host>/<dbname> or driver://user:pass@host/db"),
    Case("url-at-in-path", "https://example.com/@scope/pkg"),
    Case("prose", "The token: see the section on keys.\nSet the password: it must be long."),
    Case("header-plain", "Content-Type: application/json\nAccept: */*"),
    Case("mysql-port", "mysql -h db -P 3306 -u root -p"),
    Case("base64-image", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"),
    Case("pem-end-alone", "grep -- '-----END PRIVATE KEY-----' key.pem\n-----END PRIVATE KEY-----"),
    Case("pem-public", "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEexampleexampleexample\n-----END PUBLIC KEY-----"),
    Case("password-word", "reset your password here"),
    Case("kwarg-len", "f(token=tok, pw=x)"),
    Case("odbc-placeholder", "\"PWD=(whatever);\""),
    Case("constant-key-code", 'PRIMARY_KEY = "id"\nCACHE_KEY = "user:{id}"\nSORT_KEY=name\nSIGNING_KEY_FILE=/etc/key.pem'),
    Case("docker-run-port", "docker run -p 8080:80 nginx\npodman run -p 5432:5432 postgres"),
    Case("passwd-file", "root:x:0:0:root:/root:/bin/bash\nat 12:00:07 done"),
    Case("prose-password-line", "Reset your password\n  password expires\n"),
    # found in real code (site-packages): NLP tokens, templates, placeholders, constants
    Case("nlp-special-tokens", 'tokenizer(bos_token="__start__", pad_token="<pad>", sep_token="|SEP|")'),
    Case("nlp-token-ids", "out(token=11098, token_str=' happiness')\ntext_pad_token=129_595,"),
    Case("nlp-token-constant", 'IMAGE_TOKEN = "<image>"\nTILE_TOKEN = "TILE_GLOBAL"'),
    Case("format-template", 'upgrade_token="%s_upgrades" % name\nprint(f"password={password!r}")'),
    Case("placeholder-elided", 'build_headers(token="hf_***")\napi_key="sk-..."  # your key'),
    Case("token-named-word", '"upgrade_token": "upgrades",'),
    Case("constant-name", 'REVISION_SCRIPT_TOKEN = "REVISION_SCRIPT_FILENAME"'),
    Case("header-scheme-doc", "for the 'authorization: basic ...' header"),
    Case("same-word-inside", "f(word_delimiter_token=word_delimiter_token_for_offsets)"),
]

CASES = POSITIVE + NEGATIVE
