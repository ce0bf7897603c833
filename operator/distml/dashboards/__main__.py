"""`python -m distml.dashboards DIR`: writes the chart's dashboards (`make dashboards`)."""

import sys

from distml.dashboards import main

sys.exit(main(sys.argv[1:]))
