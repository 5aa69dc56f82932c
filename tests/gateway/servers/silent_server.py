"""An MCP "server" that reads its input and never answers (connect-timeout tests)."""

import sys

for _line in sys.stdin:
    pass
