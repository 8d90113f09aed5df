"""Who is on the other end of a request: the client's address, behind trusted proxies only.

The address counts rate limits, password failures and anonymous usage. A client must never
pick it: `X-Forwarded-For` is believed only when the peer is one of the operator's proxies
(`KOBOLDCLUSTER_TRUSTED_PROXIES`, addresses or networks), and then only back to the first
address that is not a trusted proxy. IPv6 clients are counted per /64, the block one
household or one server usually gets, so that a client cannot become 2^64 clients.

`ClientAddressMiddleware` puts the address block of the request being served in a context
variable, so that the services (which know nothing of HTTP) can count per client without
every API adapter passing it along. Outside a request there is no client: `None`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from contextvars import ContextVar, Token
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from koboldcluster.middleware import SyncAndAsyncMiddleware

# IPv6 clients are counted by the block their provider gives one site.
IPV6_BLOCK_PREFIX = 64

# The digest of the current client's block, and whether that block is a public one.
_current_block: ContextVar[tuple[str, bool] | None] = ContextVar("client_block", default=None)


# Parsing an address costs about 1.5 us, twice a request (the peer's, then its block's), and
# a process sees the same few peers (its proxies, its servers) again and again: both are kept.
# The addresses are immutable; 4096 at most, whatever a client writes into X-Forwarded-For.
@lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: object, proxies: list) -> bool:
    return any(address in network for network in proxies)


def client_address(request: HttpRequest) -> str:
    """The client's address as the cluster believes it (see the module docstring).

    Without trusted proxies the peer is the client, whatever headers it sends. The legacy
    `KOBOLDCLUSTER_NUM_PROXIES=N` (no address list) believes the N-th address from the end of
    `X-Forwarded-For`, but only from a peer on a private or loopback address (a proxy of this
    machine or its network: a client on the internet reaching the cluster directly cannot pick
    its address). A hop that is not an address is never an identity: the last address
    believed counts instead.
    """
    peer = request.META.get("REMOTE_ADDR", "") or ""
    forwarded = [
        part.strip()
        for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        if part.strip()
    ]
    proxies = settings.KOBOLDCLUSTER["TRUSTED_PROXIES"]
    current = _address(peer)
    if not proxies:
        count = settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0
        if count and forwarded and current is not None and not current.is_global:
            hop = _address(forwarded[-min(count, len(forwarded))])
            return str(hop) if hop is not None else peer
        return peer
    while current is not None and _trusted(current, proxies) and forwarded:
        hop = _address(forwarded.pop())
        if hop is None:  # garbage written into the header: the proxy's word is all we have
            return str(current)
        current = hop
    return str(current) if current is not None else peer


@lru_cache(maxsize=4096)
def address_block(address: str) -> str:
    """The unit a client is counted by: an IPv4 address, or an IPv6 /64."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_BLOCK_PREFIX}", strict=False))
    return str(parsed) if parsed is not None else address


@lru_cache(maxsize=4096)
def block_digest(block: str) -> str:
    """A keyed digest of an address block: comparable, but no address is stored anywhere."""
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, f"client:{block}".encode(), hashlib.sha256).hexdigest()[:32]


def current_client() -> str | None:
    """The digest of the address block of the request being served (None outside one)."""
    current = _current_block.get()
    return current[0] if current is not None else None


def current_public_client() -> str | None:
    """`current_client` when its block is a public (global) one: one household or server.
    A private, loopback or unparseable one may be a whole LAN, or every client behind a
    proxy the cluster was not told of (KOBOLDCLUSTER_TRUSTED_PROXIES): not one party."""
    current = _current_block.get()
    return current[0] if current is not None and current[1] else None


@lru_cache(maxsize=4096)
def _is_public(block: str) -> bool:
    address = _address(block.split("/")[0])
    return address is not None and address.is_global


def request_client(request: HttpRequest) -> str:
    """The digest of `request`'s client block: the key of every per-client count."""
    return block_digest(address_block(client_address(request)))


def remember(request: HttpRequest) -> Token[tuple[str, bool] | None]:
    """Make `request`'s client the current one (`current_client`) until `forget`."""
    block = address_block(client_address(request))
    return _current_block.set((block_digest(block), _is_public(block)))


def forget(token: Token[tuple[str, bool] | None]) -> None:
    _current_block.reset(token)


class ClientAddressMiddleware(SyncAndAsyncMiddleware):
    """Remember the request's client block for the services (`current_client`).

    Sync and async alike, so that an async stack does not pay a thread hop for it.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.is_async:
            return self._acall(request)
        token = remember(request)
        try:
            return self.get_response(request)
        finally:
            forget(token)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        token = remember(request)
        try:
            return await self.get_response(request)
        finally:
            forget(token)
