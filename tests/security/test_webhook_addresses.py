"""Issue 10 item 18: a webhook goes only to globally routable addresses.

IPv6 forms that carry an IPv4 address inside (6to4 ``2002::/16``, Teredo ``2001::/32``,
IPv4-mapped ``::ffff:0:0/96``) are judged by the IPv4 address they embed; NAT64 and
IPv4-compatible forms lie in reserved space and are refused outright; deprecated site-local
``fec0::/10`` is refused like private space.
"""

from __future__ import annotations

import pytest

from webapp.notifications.outbox import DeliveryError
from webapp.notifications.webhook import refused_address_reason, resolve_webhook_target


@pytest.mark.parametrize("address", [
    "2002:7f00:1::",            # 6to4 of 127.0.0.1
    "2002:a00:1::1",            # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::",         # 6to4 of 169.254.169.254 (cloud metadata)
    "fec0::1",                  # site-local
    "fed0::1",                  # site-local, further into fec0::/10
    "64:ff9b::7f00:1",          # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",       # NAT64 of 169.254.169.254
    "::127.0.0.1",              # IPv4-compatible loopback
    "::ffff:10.0.0.1",          # IPv4-mapped private
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
    "100::1",                   # discard-only
    "2001:db8::1",              # documentation
])
def test_addresses_that_are_not_globally_routable_are_refused(address):
    assert refused_address_reason(address) is not None, address


@pytest.mark.parametrize("address", [
    "93.184.216.34", "2606:4700::1111",
    "2002:808:808::1",          # 6to4 of 8.8.8.8: routable
])
def test_globally_routable_addresses_pass(address):
    assert refused_address_reason(address) is None


def test_the_reason_names_the_embedded_ipv4_address():
    assert "127.0.0.1" in (refused_address_reason("2002:7f00:1::") or "")
    assert "site-local" in (refused_address_reason("fec0::1") or "")


@pytest.mark.parametrize("host", ["2002:7f00:1::", "fec0::1"])
def test_a_webhook_to_such_a_literal_is_skipped_before_any_connection(host):
    with pytest.raises(DeliveryError) as refused:
        resolve_webhook_target(host, 80, allow_private=False)
    assert refused.value.skip and "refused" in refused.value.message
