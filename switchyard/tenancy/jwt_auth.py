"""JWT bearer tokens from an identity provider, beside API keys (`SWITCHYARD_JWT_JWKS_URL`).

A token is verified with PyJWT against the provider's JWKS: the signing keys are cached, and a token signed
by a key id the cache does not hold makes the set be fetched again (at most once per cooldown), so a rotated
key is taken without a restart. The issuer, the audience, `exp` and `sub` are required and checked; the tenant
(by name) and the role come from the claims the settings name. A tenant named for the first time is created:
with an identity provider in charge, the provider decides which tenants exist.

Everything here blocks (fetching the JWKS is an HTTP request, the tenant a database read): callers run it in a
worker thread."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy.orm import Session

from switchyard.core.errors import ServiceUnavailable, Unauthenticated
from switchyard.settings import Settings
from switchyard.tenancy.service import KEY_PREFIX, ROLES, Principal, get_or_create_tenant, principal_for_tenant

# Asymmetric algorithms only: a JWKS publishes public keys, and a symmetric or `none` token must never pass.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
# Clock skew allowed between the identity provider and this host.
LEEWAY_S = 30


def looks_like_jwt(token: str) -> bool:
    """API keys start with `sy_`; a JWT is three dot-separated parts."""
    return not token.startswith(KEY_PREFIX) and token.count(".") == 2


class JwtVerifier:
    """Verifies bearer JWTs and makes their principals."""

    def __init__(self, settings: Settings) -> None:
        # Settings refuse a JWKS URL without an issuer and an audience.
        assert settings.jwt_jwks_url
        assert settings.jwt_issuer
        assert settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.tenant_claim = settings.jwt_tenant_claim
        self.role_claim = settings.jwt_role_claim
        self.jwks = jwt.PyJWKClient(
            settings.jwt_jwks_url,
            cache_keys=True,
            lifespan=settings.jwt_jwks_cache_s,
            cooldown_duration=settings.jwt_jwks_refresh_cooldown_s,
            timeout=10,
        )

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and expiry are checked; Unauthenticated
        saying what is wrong otherwise (ServiceUnavailable when the JWKS cannot be fetched)."""
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError:
            raise ServiceUnavailable("cannot fetch the JWKS of the identity provider to check the token") from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token's audience is not '{self.audience}'") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the token's issuer is not '{self.issuer}'") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no '{exc.claim}' claim") from None
        except jwt.PyJWKClientError:
            raise Unauthenticated("the token is signed by a key the identity provider does not publish") from None
        except jwt.DecodeError:
            raise Unauthenticated("the bearer token is neither an API key nor a well-formed JWT") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
        return claims

    def principal(self, session: Session, token: str) -> Principal:
        """The principal of a token: its tenant (made on first use) and role, with the tenant's policy."""
        claims = self.claims(token)
        tenant_name = claims.get(self.tenant_claim)
        if not isinstance(tenant_name, str) or not tenant_name.strip() or len(tenant_name) > 200:
            raise Unauthenticated(f"the token has no '{self.tenant_claim}' claim naming a tenant")
        role = claims.get(self.role_claim)
        if role not in ROLES:
            got = "none" if role is None else f"'{role}'"
            raise Unauthenticated(f"the token's '{self.role_claim}' claim is {got}, not one of {', '.join(ROLES)}")
        subject = str(claims["sub"])
        tenant = get_or_create_tenant(session, tenant_name)
        session.commit()
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return principal_for_tenant(tenant, role=str(role), key_id=f"jwt:{subject}", expires_at=expires)
