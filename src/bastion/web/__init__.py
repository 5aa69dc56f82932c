"""The OAuth page: every enabled server with its connection and OAuth state, and the
Authorize / Revoke / Enable / Disable actions, live-updated from the store's change events.

    ui = create_ui_app(bastion, gateway_status=gateway.status, token=token)
    asgi = mount_ui(gateway_asgi_app, ui)          # serves /ui/..., everything else to the gateway

`bastion ui` serves it on its own (`bastion.web.serve`). See docs/ui.md.
"""

from bastion.web.app import close_ui, create_ui_app, mount_ui
from bastion.web.status import GatewayRow, GatewayStatus, UpstreamStatusRow

__all__ = ["GatewayRow", "close_ui", "GatewayStatus", "UpstreamStatusRow", "create_ui_app", "mount_ui"]
