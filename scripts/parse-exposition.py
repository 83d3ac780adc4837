#!/usr/bin/python3
"""Parses Prometheus text exposition (stdin) with prometheus_client's parser, the reference
Python implementation, and prints what it read as JSON: [{name, type, help, samples: [{name,
labels, value}]}]. MetricsTests feed rtvisor's /metrics output through it; exit status 3 when
the parser is not installed (Debian python3-prometheus-client), 1 when it rejects the input."""
import json
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("python3-prometheus-client is not installed (apt-get install python3-prometheus-client)", file=sys.stderr)
    sys.exit(3)


def value(v):
    # JSON has no infinities; +Inf only occurs as a label here, but be exact anyway.
    return str(v) if math.isinf(v) or math.isnan(v) else v


try:
    families = [
        {
            "name": f.name,
            "type": f.type,
            "help": f.documentation,
            "samples": [{"name": s.name, "labels": s.labels, "value": value(s.value)} for s in f.samples],
        }
        for f in text_string_to_metric_families(sys.stdin.read())
    ]
except Exception as e:  # the parser raises ValueError and friends on malformed lines
    print(f"prometheus_client rejected the exposition: {e}", file=sys.stderr)
    sys.exit(1)
json.dump(families, sys.stdout)
