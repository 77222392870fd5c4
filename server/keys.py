"""The operator's keys API under /api/v1/keys (JSON): make, list and revoke tokens.

A token is shown once, in the reply that makes it; the store keeps only its hash."""

from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.quantities import parse_duration

from .auth import MAKEABLE, Key, Role, check_name, new_token, token_hash
from .errors import BadRequest, NotFound
from .handlers import BaseHandler

MAX_LIFETIME = 10 * 365 * 86400.0


class KeysHandler(BaseHandler):
    async def get(self) -> None:
        now = self.master.now()
        self.reply({"keys": [key.to_json(now) for key in await self.master.store.list_keys()]})

    async def post(self) -> None:
        """``{"name": NAME, "role": "scientist", "expires": "30d"}`` (expires optional)."""
        body = self.payload()
        if not isinstance(body, dict) or set(body) - {"name", "role", "expires"}:
            raise BadRequest('body must be {"name": NAME, "role": ROLE, "expires": "30d"} (expires optional)')
        try:
            name = check_name(body.get("name"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        roles = ", ".join(r.value for r in MAKEABLE)
        if not isinstance(body.get("role"), str) or body["role"] not in {r.value for r in MAKEABLE}:
            raise BadRequest(f"role must be one of {roles}")
        now = self.master.now()
        expires_at = None
        if body.get("expires") is not None:
            try:
                lifetime = parse_duration(body["expires"], "expires")
            except ProtocolError as exc:
                raise BadRequest(str(exc)) from None
            if not 0 < lifetime <= MAX_LIFETIME:
                raise BadRequest("expires must be more than 0 and at most 10 years, e.g. 30d")
            expires_at = now + lifetime
        token = new_token()
        key = Key(name, Role(body["role"]), token_hash(token), now, name, expires_at=expires_at)
        await self.master.store.add_key(key)
        self.reply(key.to_json(now) | {"token": token}, status=201)


class KeyHandler(BaseHandler):
    async def delete(self, name: str) -> None:
        """Revoke a key by name: an account takes its machines with it; a client id revokes one machine."""
        revoked = await self.master.store.revoke_key(name, self.master.now())
        if not revoked:
            known = {key.name for key in await self.master.store.list_keys()}
            if name not in known:
                raise NotFound(f"no key named {name!r:.64}; see dockercomp keys list")
        self.reply({"name": name, "revoked": revoked})
