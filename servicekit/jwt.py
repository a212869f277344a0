"""JWTs for both services: their settings, keys, verification and minting. No grpc here:
a client or a script mints a token without importing a server (servicekit.auth is the
server's side: the bearer metadata and the principal of the call being served).

The algorithm is pinned by configuration, never taken from the token's header, so
`alg: none` and HS/RS confusion are refused.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from servicekit.errors import TokenExpired, Unauthenticated
from servicekit.settings import EnvReader, SettingsError

SYMMETRIC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})
# The JWK key type each pinned algorithm verifies with; a JWKS may publish others beside it.
KEY_TYPE_FOR_ALGORITHM = {"RS256": "RSA", "ES256": "EC"}
MIN_SECRET_BYTES = 32
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a call: the token's subject and what its roles allow."""

    subject: str
    roles: frozenset[str]


@dataclass(frozen=True)
class AuthSettings:
    algorithm: str = "HS256"
    # HS256: the shared secret (at least 32 bytes).
    secret: str = field(default="", repr=False)
    # RS256/ES256: a PEM public key or a JWKS document, to verify without the signing key.
    public_key: str = ""
    # RS256/ES256: the PEM private key, only where tokens are minted.
    private_key: str = field(default="", repr=False)
    # Names the signing key in the tokens' `kid` header (chooses the key in a JWKS).
    key_id: str = ""
    # RS256/ES256: where the identity provider publishes its JWKS, fetched again when a token
    # names a key it lacks (so keys rotate without a restart) and in the background every
    # `jwks_max_age_s`; a fetch waits `jwks_timeout_s` at most, once per `jwks_min_refetch_s`.
    jwks_url: str = ""
    jwks_timeout_s: float = 2.0
    jwks_min_refetch_s: float = 10.0
    jwks_max_age_s: float = 300.0
    issuer: str = "inventory-crm"
    audience: str = "inventory-crm"
    leeway_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str, *, check: bool = True) -> AuthSettings:
        """`check=False` leaves the keys unchecked until a verifier or issuer is built from them."""
        read = EnvReader(env, prefix)
        settings = cls(
            algorithm=read.str("JWT_ALGORITHM", cls.algorithm).upper(),
            secret=read.secret("JWT_SECRET"),
            public_key=read.secret("JWT_PUBLIC_KEY"),
            private_key=read.secret("JWT_PRIVATE_KEY"),
            key_id=read.str("JWT_KEY_ID", ""),
            jwks_url=read.str("JWT_JWKS_URL", ""),
            jwks_timeout_s=read.float("JWT_JWKS_TIMEOUT_S", cls.jwks_timeout_s),
            jwks_min_refetch_s=read.float("JWT_JWKS_MIN_REFETCH_S", cls.jwks_min_refetch_s),
            jwks_max_age_s=read.float("JWT_JWKS_MAX_AGE_S", cls.jwks_max_age_s),
            issuer=read.str("JWT_ISSUER", cls.issuer),
            audience=read.str("JWT_AUDIENCE", cls.audience),
            leeway_s=read.float("JWT_LEEWAY_S", cls.leeway_s),
        )
        if check:
            settings.check()
        return settings

    def check(self) -> None:
        if self.algorithm in SYMMETRIC_ALGORITHMS:
            if len(self.secret.encode()) < MIN_SECRET_BYTES:
                raise SettingsError(
                    f"JWT_SECRET (or JWT_SECRET_FILE) must hold at least {MIN_SECRET_BYTES} random bytes"
                )
        elif self.algorithm in ASYMMETRIC_ALGORITHMS:
            if not (self.public_key or self.private_key or self.jwks_url):
                raise SettingsError(
                    f"{self.algorithm} needs JWT_JWKS_URL, JWT_PUBLIC_KEY_FILE (PEM or JWKS) or JWT_PRIVATE_KEY_FILE"
                )
        else:
            raise SettingsError(f"JWT_ALGORITHM must be one of HS256, RS256, ES256, got {self.algorithm!r}")
        if self.jwks_url and not _trusted_jwks_url(self.jwks_url):
            raise SettingsError(
                f"JWT_JWKS_URL must be an https:// URL (http:// only to this machine), got {self.jwks_url!r}"
            )
        if self.jwks_url and self.algorithm in SYMMETRIC_ALGORITHMS:
            raise SettingsError("JWT_JWKS_URL publishes public keys: it needs JWT_ALGORITHM RS256 or ES256")
        if not 0 < self.jwks_timeout_s <= 30:
            raise SettingsError(f"JWT_JWKS_TIMEOUT_S must be within (0, 30], got {self.jwks_timeout_s}")
        if self.jwks_min_refetch_s <= 0 or self.jwks_max_age_s <= 0:
            raise SettingsError("JWT_JWKS_MIN_REFETCH_S and JWT_JWKS_MAX_AGE_S must be greater than 0")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _trusted_jwks_url(url: str) -> bool:
    """https, or plain http to this machine: over the network, whoever could answer an http
    fetch could publish keys and sign any token."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS)


def _usable_keys(jwks: jwt.PyJWKSet, algorithm: str) -> dict[str, Any]:
    """A JWKS's keys by key id. A token names its key by `kid` before it is verified: only keys
    that can verify the pinned algorithm may be picked, or a token could choose an RSA key for ES256."""
    return {
        key.key_id or "": key.key
        for key in jwks.keys
        if key.key_type == KEY_TYPE_FOR_ALGORITHM[algorithm] and key.public_key_use != "enc"
    }


def _load_verification_keys(settings: AuthSettings) -> dict[str, Any]:
    """Keys by key id ("" when the tokens need not name one)."""
    if settings.algorithm in SYMMETRIC_ALGORITHMS:
        return {"": settings.secret}
    if settings.public_key.lstrip().startswith("{"):
        return _usable_keys(jwt.PyJWKSet.from_json(settings.public_key), settings.algorithm)
    if settings.public_key:
        return {"": serialization.load_pem_public_key(settings.public_key.encode())}
    private_key = serialization.load_pem_private_key(settings.private_key.encode(), password=None)
    return {"": private_key.public_key()}


_UNAUTHENTICATED_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidAudienceError, "token is meant for another audience"),
    (jwt.InvalidIssuerError, "token comes from another issuer"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.DecodeError, "token is malformed"),
    (jwt.InvalidTokenError, "token is invalid"),
)
_CACHE_LIMIT = 4096
# The subject is recorded with every change it makes (the ledger's principal column).
MAX_SUBJECT_LENGTH = 255
MAX_EXPIRY = 253402300799  # 9999-12-31T23:59:59Z: a later expiry is no real one


def _fingerprints(keys: Mapping[str, Any]) -> dict[str, bytes]:
    der, info = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return {kid: key.public_bytes(der, info) for kid, key in keys.items()}


class RemoteKeySet:
    """The keys of the JWKS at `jwks_url`, fetched by PyJWT's PyJWKClient (its own set cache is
    off: when it expires it fetches in the foreground and a failed fetch rejects every token).

    Verification runs on the server's event loop, so it never waits for a fetch: the keys
    fetched last are served. A token naming an unknown `kid` is refused and starts a fetch in
    a thread, at most once per `jwks_min_refetch_s` (a flood of made-up kids costs one fetch);
    keys older than `jwks_max_age_s` are fetched again the same way, so a withdrawn key stops
    working. `generation` changes whenever the keys do."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._client = jwt.PyJWKClient(settings.jwks_url, cache_jwk_set=False, timeout=settings.jwks_timeout_s)
        self._keys: dict[str, Any] = {}
        self.generation = 0
        self._fetched_at = self._tried_at = float("-inf")  # time.monotonic() of the last fetch, tried
        self._fetch_lock = threading.Lock()
        self._fetch()  # at start, before serving: the one fetch anything waits for

    def key_for(self, key_id: str) -> Any:
        if key_id not in self._keys:
            self.refresh(unknown_key=True)
            raise Unauthenticated("token is signed by an unknown key")
        return self._keys[key_id]

    def refresh(self, *, unknown_key: bool = False) -> None:
        """Starts a fetch in a thread when the keys are `jwks_max_age_s` old (or a token named
        a key they lack), at most once per `jwks_min_refetch_s`; never waits for it."""
        now = time.monotonic()
        may_fetch = now - self._tried_at >= self._settings.jwks_min_refetch_s  # failed fetches count too
        stale = now - self._fetched_at >= self._settings.jwks_max_age_s
        if (unknown_key or stale) and may_fetch and not self._fetch_lock.locked():
            self._tried_at = now
            threading.Thread(target=self._fetch, name="jwks-refresh", daemon=True).start()

    def _fetch(self) -> None:
        if not self._fetch_lock.acquire(blocking=False):
            return  # a fetch is under way: the keys it brings serve the next calls
        try:
            self._tried_at = time.monotonic()
            keys = _usable_keys(self._client.get_jwk_set(), self._settings.algorithm)
            if _fingerprints(keys) != _fingerprints(self._keys):
                self._keys, self.generation = keys, self.generation + 1
            self._fetched_at = time.monotonic()
        # Unreachable, cut mid-body (OSError), not JSON, no usable key.
        except (jwt.PyJWTError, ValueError, OSError) as error:
            log.warning(
                "cannot fetch the JWKS at %s, keeping %d keys: %s", self._settings.jwks_url, len(self._keys), error
            )
        finally:
            self._fetch_lock.release()


class TokenVerifier:
    """Verifies bearer tokens. A token verified once is remembered until it expires, so
    that a service token reused for every call costs one signature check, not thousands."""

    def __init__(self, settings: AuthSettings) -> None:
        settings.check()
        self._settings = settings
        self._keys = {} if settings.jwks_url else _load_verification_keys(settings)
        self._remote_keys = RemoteKeySet(settings) if settings.jwks_url else None
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._verified_generation = 0  # of the remote keys the remembered tokens were checked with
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        remote = self._remote_keys
        if remote is not None:
            remote.refresh()
            if remote.generation != self._verified_generation:
                with self._lock:  # the keys changed: a token checked with a withdrawn key must not stay accepted
                    self._verified.clear()
                    self._verified_generation = remote.generation
        remembered = self._verified.get(token)
        if remembered is not None and time.time() < remembered[1]:
            return remembered[0]
        claims = self._decode(token)
        principal = Principal(subject=str(claims["sub"]), roles=_roles(claims))
        with self._lock:
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = (principal, claims["exp"])
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        settings = self._settings
        try:
            key = self._key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[settings.algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.InvalidTokenError as error:
            reason = next(text for kind, text in _UNAUTHENTICATED_REASONS if isinstance(error, kind))
            kind = TokenExpired if isinstance(error, jwt.ExpiredSignatureError) else Unauthenticated
            raise kind(reason) from None
        # PyJWT compares exp as an int of any size; kept as a float here, 10**400 would overflow.
        expiry = claims["exp"]
        if not (isinstance(expiry, (int, float)) and expiry <= MAX_EXPIRY):  # rules out inf too
            raise Unauthenticated("token expiry is out of range")
        claims["exp"] = float(expiry)
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Unauthenticated("token subject is empty")
        if len(claims["sub"]) > MAX_SUBJECT_LENGTH:
            raise Unauthenticated(f"token subject is longer than {MAX_SUBJECT_LENGTH} characters")
        return claims

    def _key_for(self, token: str) -> Any:
        if len(self._keys) == 1 and "" in self._keys:
            return self._keys[""]
        key_id = jwt.get_unverified_header(token).get("kid", "")
        if self._remote_keys is not None:
            return self._remote_keys.key_for(str(key_id))
        if key_id not in self._keys:
            raise Unauthenticated("token is signed by an unknown key")
        return self._keys[key_id]


def _roles(claims: Mapping[str, Any]) -> frozenset[str]:
    """`roles` as a list of strings (or one space-separated string), plus `scope` (OAuth style)."""
    roles, scope = claims.get("roles", []), claims.get("scope", "")
    if isinstance(roles, str):
        roles = roles.split()
    if not (isinstance(roles, list) and all(isinstance(role, str) for role in roles) and isinstance(scope, str)):
        raise Unauthenticated("token roles claim is malformed")
    return frozenset(roles) | frozenset(scope.split())


class TokenIssuer:
    """Mints tokens with the configured signing key: for scripts/mint_token and service tokens."""

    def __init__(self, settings: AuthSettings) -> None:
        settings.check()
        if settings.algorithm in ASYMMETRIC_ALGORITHMS and not settings.private_key:
            raise SettingsError(f"minting {settings.algorithm} tokens needs JWT_PRIVATE_KEY_FILE")
        self._settings = settings
        self._key: Any = (
            settings.secret
            if settings.algorithm in SYMMETRIC_ALGORITHMS
            else serialization.load_pem_private_key(settings.private_key.encode(), password=None)
        )

    def mint(self, subject: str, roles: Iterable[str], lifetime_s: float) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "roles": sorted(roles),
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_s),
        }
        headers = {"kid": self._settings.key_id} if self._settings.key_id else None
        return jwt.encode(claims, self._key, algorithm=self._settings.algorithm, headers=headers)
