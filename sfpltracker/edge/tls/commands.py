"""Admin commands ``tls-status`` and ``tls-renew`` (CLI: ``python -m sfpltracker tls``).

They need the running gateway's edge (its certificates and ACME manager), so offline they
refuse with a reason.
"""

from __future__ import annotations

from sfpltracker import admin


def tls_status(ctx: admin.AdminContext, args: dict):
    edge = ctx.edge
    if edge is None:
        raise admin.AdminError("tls-status needs the running gateway")
    return edge.tls_status()


def tls_renew(ctx: admin.AdminContext, args: dict):
    # Imported here: the command list is read by every CLI start, which should not load the
    # ACME client; the running gateway that executes this has it loaded already.
    from sfpltracker.edge.tls.acme import RenewalFailed

    edge = ctx.edge
    if edge is None or edge.acme is None:
        raise admin.AdminError("tls-renew needs the running gateway with LetsEncryptDomains")
    domain = str(args.get("domain", ""))
    d = edge.acme.renew_now(domain)

    def failed(failure):
        failure.trap(RenewalFailed)
        raise admin.AdminError(f"renewal of {domain} failed: {failure.value}")

    d.addCallbacks(lambda _: edge.tls_status(), failed)
    return d
