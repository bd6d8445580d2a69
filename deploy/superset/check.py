"""Checks the imported dashboard in a running Superset against the lambda HTTP API, then in a real browser.

Run by deploy/superset/check with the Superset venv's Python:

    check.py SUPERSET_URL API_URL SCREENSHOT.png

1. Logs in through the REST API and asks `/api/v1/chart/{id}/data/` for every chart of the dashboard
   `lambda-shop`: each must answer 200 with rows.
2. Compares three charts with the lambda HTTP API over the same (whole) range: events per hour by type
   (counts, exact), revenue per day (sum of purchase prices, to the micro-unit) and the top brands by
   revenue (the same brands with the same revenue).
3. Opens the dashboard in headless Chromium (/usr/bin/chromium, driven by Playwright; every request not
   addressed to Superset is blocked), waits until no chart is loading, fails on an alert or an empty chart,
   requires drawn content in every chart (a canvas for ECharts, body rows for tables) and writes the PNG.

Exits non-zero with the reason on the first failure.
"""

import json
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal

SUPERSET, API, PNG = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"), sys.argv[3]
USER, PASSWORD = "admin", "admin"
DASHBOARD = "lambda-shop"


def fail(message):
    print(f"superset check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def http(url, token=None, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read(), parse_float=Decimal)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def api(path):
    status, body = http(API + path)
    if status != 200:
        fail(f"lambda API {path}: {status} {body}")
    return body["rows"]


def chart_data(token, charts, name):
    chart = charts[name]
    status, body = http(f"{SUPERSET}/api/v1/chart/{chart}/data/", token)
    if status != 200:
        fail(f"chart `{name}` ({chart}): data API answered {status}: {body}")
    rows = body["result"][0]["data"]
    if not rows:
        fail(f"chart `{name}`: no rows")
    return rows


def epoch_seconds(value):
    """A chart's time value: epoch milliseconds (time-grained charts) or `YYYY-MM-DD HH:MM:SS` text."""
    if isinstance(value, (int, Decimal)):
        return int(value) // 1000
    return int(datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc).timestamp())


def api_seconds(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def main():
    status, login = http(
        f"{SUPERSET}/api/v1/security/login",
        body={"username": USER, "password": PASSWORD, "provider": "db", "refresh": True},
    )
    if status != 200:
        fail(f"login: {status} {login}")
    token = login["access_token"]

    status, dash = http(f"{SUPERSET}/api/v1/dashboard/{DASHBOARD}/charts", token)
    if status != 200:
        fail(f"dashboard `{DASHBOARD}`: {status} {dash}")
    charts = {c["slice_name"]: c["id"] for c in dash["result"]}
    if len(charts) < 5:
        fail(f"dashboard `{DASHBOARD}` has {len(charts)} charts: {sorted(charts)}")
    answered = {name: len(chart_data(token, charts, name)) for name in charts}
    for name, rows in sorted(answered.items()):
        print(f"superset check: chart `{name}` answered {rows} rows")

    # 1. events per hour by type: every (hour, type) count equals the API's
    got = {}
    for r in chart_data(token, charts, "Events per hour by type"):
        got[(epoch_seconds(r["bucket_start"]), r["event_type"])] = int(r["events"])
    want = {}
    for r in api("/v1/views/by_type?granularity=hour"):
        want[(api_seconds(r["bucket_start"]), r["dims"]["event_type"])] = int(r["metrics"]["count"])
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:10]
        fail(f"events per hour by type: {len(got)} cells in Superset, {len(want)} in the API; differing: {diff}")
    print(f"superset check: events per hour by type equals the API ({len(got)} cells, {sum(got.values())} events)")

    # 2. revenue per day: the sum of purchase prices per day, to the micro-unit
    got = {epoch_seconds(r["bucket_start"]): Decimal(str(r["revenue"])) for r in chart_data(token, charts, "Revenue per day")}
    want = {
        api_seconds(r["bucket_start"]): Decimal(str(r["metrics"]["sum_price"]))
        for r in api("/v1/views/by_type?granularity=day&event_type=purchase")
    }
    if set(got) != set(want) or any(abs(got[d] - want[d]) > Decimal("0.000001") for d in want):
        fail(f"revenue per day: Superset {sorted(got.items())[:5]}... API {sorted(want.items())[:5]}...")
    print(f"superset check: revenue per day equals the API ({len(got)} days, total {sum(want.values())})")

    # 3. top brands by revenue: the same ten brands with the same revenue
    got = {r["brand"]: Decimal(str(r["revenue"])) for r in chart_data(token, charts, "Top brands by revenue")}
    top = api("/v1/views/by_brand?granularity=day&event_type=purchase&group_by=brand&order_by=sum_price&top=10")
    want = {r["dims"]["brand"]: Decimal(str(r["metrics"]["sum_price"])) for r in top}
    if set(got) != set(want) or any(abs(got[b] - want[b]) > Decimal("0.000001") for b in want):
        fail(f"top brands by revenue: Superset {got}, API {want}")
    print(f"superset check: top brands by revenue equal the API ({', '.join(list(want)[:3])}, ...)")

    browser_check()


def browser_check():
    from playwright.sync_api import sync_playwright

    host = urllib.parse.urlparse(SUPERSET).netloc
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        # offline and deterministic: only Superset itself is reachable (the login page asks for a pixel)
        page.route("**/*", lambda route: route.continue_() if urllib.parse.urlparse(route.request.url).netloc == host else route.abort())
        page.goto(f"{SUPERSET}/login/")
        page.fill("#username", USER)
        page.fill("#password", PASSWORD)
        page.click('[data-test="login-button"]')
        page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
        page.goto(f"{SUPERSET}/superset/dashboard/{DASHBOARD}/?standalone=3")
        deadline = time.time() + 120
        while True:
            state = page.evaluate(
                """() => {
                    const holders = [...document.querySelectorAll('.dashboard-component-chart-holder')];
                    return {
                        charts: holders.length,
                        loading: holders.filter(h => !h.querySelector('.chart-container') || h.querySelector('.loading')).length,
                        drawn: holders.filter(h => h.querySelector('canvas') || h.querySelector('table tbody tr')).length,
                        empty: holders.filter(h => h.querySelector('.ant-empty')).length,
                        alerts: holders.flatMap(h => [...h.querySelectorAll('[role=alert]')]).map(a => a.innerText.slice(0, 200)),
                    };
                }"""
            )
            if state["alerts"]:
                page.screenshot(path=PNG, full_page=True)
                fail(f"the dashboard shows an alert: {state['alerts']}")
            if state["empty"]:
                page.screenshot(path=PNG, full_page=True)
                fail(f"{state['empty']} chart(s) show no data")
            if state["charts"] >= 5 and state["loading"] == 0 and state["drawn"] == state["charts"]:
                break
            if time.time() > deadline:
                page.screenshot(path=PNG, full_page=True)
                fail(f"the dashboard did not finish rendering in 120 s: {state}")
            time.sleep(0.5)
        time.sleep(5)  # ECharts animates its series in: let them settle before the picture
        page.screenshot(path=PNG, full_page=True)
        browser.close()
    print(f"superset check: the dashboard rendered {state['charts']} charts with data in Chromium; screenshot {PNG}")


if __name__ == "__main__":
    main()
