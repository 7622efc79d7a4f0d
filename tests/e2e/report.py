"""Prints the e2e timing rows of every runtime side by side (Markdown).

  python tests/e2e/report.py REPORT_FILE
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| runtime | TTFT ms | per-token gap ms | last token ms | model direct: TTFT ms | gap ms | added TTFT ms |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['runtime']} | {r['ttft_ms']:.1f} | {r['gap_ms']:.2f} | {r['last_ms']:.1f} | "
          f"{r['direct_ttft_ms']:.1f} | {r['direct_gap_ms']:.2f} | {r['ttft_ms'] - r['direct_ttft_ms']:+.1f} |")
print(f"(medians of {rows[0]['rounds'] if rows else 0} interleaved rounds each, same prompt, temperature 0)")
