# How an upstream verifies authgate's identity assertion (docs/assertion.md); the test suite
# runs this file: python3 scripts/verify_assertion.py JWKS_URL TOKEN
import sys

import jwt  # PyJWT, plus the `cryptography` package for ES256

jwks = jwt.PyJWKClient(sys.argv[1])  # http://authgate-admin:9901/.well-known/jwks.json


def verify(token):  # token = request.headers["x-auth-assertion"]; raises if not valid
    key = jwks.get_signing_key_from_jwt(token).key  # by kid; refetched on an unknown kid
    return jwt.decode(token, key, algorithms=["ES256"], issuer="authgate", leeway=5,
                      options={"require": ["iss", "sub", "iat", "exp", "jti"]})


claims = verify(sys.argv[2])
print(claims["sub"], claims.get("tenant_id"), " ".join(claims["scopes"]), claims["route"])
