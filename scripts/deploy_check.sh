#!/usr/bin/env bash
# docs/deploy.md followed literally on this machine: one web, two workers, PostgreSQL, Redis.
#
# The commands are not copied here: they are read from the blocks of docs/deploy.md marked
# <!-- deploy-check: NAME --> (the SQL, the environment file, the release step, the systemd
# units' WorkingDirectory/Environment/ExecStart), with only these substitutions:
#   /opt/taskdeck/venv -> this checkout's .venv   /opt/taskdeck/app -> this checkout
#   /opt/taskdeck -> a scratch folder             /etc/taskdeck/taskdeck.env -> a scratch file
#   role and database "taskdeck" -> names of this run's own (dropped at the end)
#   the example secrets, hosts and ports -> generated secrets, free local ports, a local SMTP
#   server (aiosmtpd), and the example processors (webapp.examples) for myapp.tasks.
# Then it checks /healthz, /readyz, /metrics (and its token), that the web runs no consumer,
# a task submitted through the API and one through the CLI (with its mail), JSON logs
# carrying the task, and a graceful SIGTERM of a worker and of gunicorn.
#
#   bash scripts/deploy_check.sh          (tests/test_gunicorn.py runs it in CI)
# Settings: DEPLOY_CHECK_PG_ADMIN (default postgresql://postgres@127.0.0.1:5432/postgres),
# DEPLOY_CHECK_REDIS (redis://127.0.0.1:6379/0), DEPLOY_CHECK_WORKDIR (a new temp folder).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DOC="$ROOT/docs/deploy.md"
VENV="${DEPLOY_CHECK_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PG_ADMIN="${DEPLOY_CHECK_PG_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}"
REDIS="${DEPLOY_CHECK_REDIS:-redis://127.0.0.1:6379/0}"
WORK="${DEPLOY_CHECK_WORKDIR:-$(mktemp -d /tmp/deploy_check.XXXXXX)}"
TAG="dc_$$_$RANDOM"
ROLE="taskdeck_$TAG"
DB="taskdeck_$TAG"
ENV_FILE="$WORK/taskdeck.env"
PIDS=()

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done; exit 1; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
psql_admin() { "$PY" - "$PG_ADMIN" "$1" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    for statement in filter(None, (s.strip() for s in sys.argv[2].split(";"))):
        c.execute(statement)
PY
}
psql_db() { "$PY" - "$ADMIN_DB_URL" "$1" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    for row in c.execute(sys.argv[2]):
        print("\t".join(str(v) for v in row))
PY
}

# The fenced block that follows "<!-- deploy-check: NAME -->" in docs/deploy.md.
block() { "$PY" - "$DOC" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
match = re.search(r"<!-- deploy-check: %s -->\s*```[a-z]*\n(.*?)```" % re.escape(sys.argv[2]), text, re.S)
if not match:
    sys.exit(f"docs/deploy.md has no block marked deploy-check: {sys.argv[2]}")
print(match.group(1), end="")
PY
}
paths() { sed -e "s#/opt/taskdeck/venv#$VENV#g" -e "s#/opt/taskdeck/app#$ROOT#g" \
              -e "s#/etc/taskdeck/taskdeck.env#$ENV_FILE#g" -e "s#/opt/taskdeck#$WORK#g"; }
unit_value() { printf '%s\n' "$1" | sed -n "s/^$2=//p"; }

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done; kill -KILL "$pid" 2>/dev/null; done
  psql_admin "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE); DROP ROLE IF EXISTS \"$ROLE\"" >/dev/null 2>&1
}
trap cleanup EXIT
mkdir -p "$WORK"

# -- 2. Database ---------------------------------------------------------------------------
say "database: the SQL of docs/deploy.md section 2 as role $ROLE, database $DB"
SQL="$(block database | sed -e "s/ROLE taskdeck /ROLE \"$ROLE\" /" -e "s/DATABASE taskdeck OWNER taskdeck/DATABASE \"$DB\" OWNER \"$ROLE\"/")"
psql_admin "$SQL" || fail "creating the role and database"
ADMIN_DB_URL="${PG_ADMIN%/*}/$DB"

# -- 3. Environment ------------------------------------------------------------------------
WEB_PORT="$(free_port)"
SMTP_PORT="$(free_port)"
METRICS_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
HOSTPORT="$(printf '%s' "$PG_ADMIN" | sed -E 's#^[a-z+]+://([^@/]*@)?([^/]*)/.*#\2#')"
say "environment file $ENV_FILE (web on :$WEB_PORT, SMTP on :$SMTP_PORT)"
block env | sed \
  -e "s#^DATABASE_URL=.*#DATABASE_URL=postgresql://$ROLE:change-me@$HOSTPORT/$DB#" \
  -e "s#^REDIS_URL=.*#REDIS_URL=$REDIS#" \
  -e "s#^SECRET_KEY=.*#SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')#" \
  -e "s#^ASYNC_TASK_PROCESSORS=.*#ASYNC_TASK_PROCESSORS=webapp.examples#" \
  -e "s#^ASYNC_TASK_BASE_URL=.*#ASYNC_TASK_BASE_URL=http://127.0.0.1:$WEB_PORT#" \
  -e "s#^ASYNC_TASK_METRICS_TOKEN=.*#ASYNC_TASK_METRICS_TOKEN=$METRICS_TOKEN#" \
  -e "s#^MAIL_SERVER=.*#MAIL_SERVER=127.0.0.1#" \
  -e "s#^MAIL_PORT=.*#MAIL_PORT=$SMTP_PORT#" \
  -e "s#^MAIL_USE_TLS=.*#MAIL_USE_TLS=false#" \
  -e "s#^PORT=.*#PORT=$WEB_PORT#" > "$ENV_FILE"
# Scratch-run only: a lock prefix of its own, and short intervals so the check is quick.
cat >> "$ENV_FILE" <<EOF
ASYNC_TASK_REDIS_LOCK_PREFIX=deploycheck-$TAG:
ASYNC_TASK_POLL_INTERVAL=1
ASYNC_TASK_SHUTDOWN_GRACE=10
WEB_CONCURRENCY=2
DOTENV_PATH=$WORK/no.env
EOF
chmod 0640 "$ENV_FILE"
grep -q "^DATABASE_URL=postgresql://$ROLE:" "$ENV_FILE" || fail "env block has no DATABASE_URL line"

"$PY" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" > "$WORK/smtp.log" 2>&1 &
PIDS+=($!)

# -- 4. Release step -----------------------------------------------------------------------
say "release step (migrations)"
RELEASE="$(block release | paths)"
(cd "$WORK" && env -i PATH="$PATH" HOME="${HOME:-/tmp}" bash -euc "$RELEASE") > "$WORK/release.log" 2>&1 \
  || fail "release step"
[ "$(psql_db 'SELECT count(*) FROM alembic_version')" = "1" ] || fail "no alembic_version after the release step"

# -- 4. The units' commands ------------------------------------------------------------------
STARTED_PID=""
start_unit() {  # start_unit NAME UNIT_TEXT INSTANCE; sets STARTED_PID (a child of this shell)
  local name="$1" unit="$2" instance="$3"
  unit="$(printf '%s\n' "$unit" | paths | sed "s/%i/$instance/g")"
  local dir exec extra
  dir="$(unit_value "$unit" WorkingDirectory)"
  exec="$(unit_value "$unit" ExecStart)"
  extra="$(unit_value "$unit" Environment)"
  [ -n "$exec" ] || fail "unit $name has no ExecStart"
  mkdir -p "$dir"
  (cd "$dir" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" bash -c \
      "set -a; . '$ENV_FILE'; ${extra:+export $extra;} set +a; exec $exec") > "$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}
WEB_UNIT="$(block unit-web)"
WORKER_UNIT="$(block unit-worker)"
say "starting taskdeck-web, taskdeck-worker@1, taskdeck-worker@2"
start_unit web "$WEB_UNIT" ""; WEB_PID="$STARTED_PID"
start_unit worker-1 "$WORKER_UNIT" 1; W1_PID="$STARTED_PID"
start_unit worker-2 "$WORKER_UNIT" 2; W2_PID="$STARTED_PID"
BASE="http://127.0.0.1:$WEB_PORT"

# -- 5. Checks --------------------------------------------------------------------------------
check() { "$PY" - "$@" <<'PY'
import json, sys, time, urllib.request, urllib.error

def call(method, url, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)

def wait(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)

command, base = sys.argv[1], sys.argv[2]
if command == "ready":
    wait("/healthz", lambda: call("GET", f"{base}/healthz")[0] == 200)
    status, body = wait("/readyz 200", lambda: (r := call("GET", f"{base}/readyz"))[0] == 200 and r)
    ready = json.loads(body)
    assert (ready["database"], ready["redis"], ready["smtp"]) == ("ok", "ok", "ok"), ready
    print("readyz:", body.strip())
elif command == "metrics":
    token = sys.argv[3]
    assert call("GET", f"{base}/metrics")[0] == 401, "metrics must need the token"
    def two_online():
        status, text = call("GET", f"{base}/metrics", token=token)
        return status == 200 and "taskdeck_workers_online 2.0" in text and text
    wait("2 workers online in /metrics", two_online)
    print("metrics: 2 workers online")
elif command == "api-submit":
    token = sys.argv[3]
    status, body = call("POST", f"{base}/api/tasks", {"task_type": "CREATE_SERVER",
                        "payload": {"name": "web-1", "seconds": 0.2, "fail_rate": 0}}, token)
    assert status == 202, (status, body)
    print(json.loads(body)["id"])
elif command == "wait-success":
    token, ids = sys.argv[3], sys.argv[4:]
    for task_id in ids:
        def done():
            status, body = call("GET", f"{base}/api/tasks/{task_id}", token=token)
            return status == 200 and json.loads(body)["status"] in ("SUCCESS", "FAILURE") and json.loads(body)
        task = wait(f"task {task_id} to finish", done)
        assert task["status"] == "SUCCESS", task
        print(f"task {task_id} ({task['task_type']}): SUCCESS")
elif command == "json-logs":
    task_id, paths = int(sys.argv[3]), sys.argv[4:]
    def lines():
        return [json.loads(l) for path in paths for l in open(path) if l.startswith("{")]
    def tagged():  # the engine's warning about the failed attempt, logged while the task ran
        return [l for l in lines() if l.get("task_id") == task_id and "raised" in l["message"]]
    found = wait(f"a JSON log line naming task {task_id}", tagged, timeout=30)
    assert (found[0]["task_type"], found[0]["attempt"]) == ("ALWAYS_FAILS", 1), found[0]
    print(f"logs: {len(lines())} JSON lines; task {task_id}: {found[0]['message']!r} "
          f"with task_type={found[0]['task_type']} attempt={found[0]['attempt']}")
PY
}
FLASK_ENV_RUN() { (cd "$WORK" && env -i PATH="$PATH" HOME="${HOME:-/tmp}" bash -c \
    "set -a; . '$ENV_FILE'; set +a; exec '$VENV/bin/flask' --app webapp \"\$@\"" flask "$@"); }

check ready "$BASE" || fail "web not ready"
check metrics "$BASE" "$METRICS_TOKEN" || fail "metrics"
RUNNING="$(psql_db "SELECT pid FROM worker WHERE status = 'RUNNING' ORDER BY pid" | tr '\n' ' ')"
EXPECTED="$(printf '%s\n' "$W1_PID" "$W2_PID" | sort -n | tr '\n' ' ')"
[ "$RUNNING" = "$EXPECTED" ] || fail "consumers running in pids [$RUNNING], expected only the workers [$EXPECTED]"
say "consumers run in the two workers only: $RUNNING"

TOKEN="$(FLASK_ENV_RUN tokens create deploy-check --reach all 2>>"$WORK/cli.log" | tail -n 1)"
API_ID="$(check api-submit "$BASE" "$TOKEN")" || fail "API submit"
CLI_ID="$(FLASK_ENV_RUN tasks submit SEND_REPORT --payload '{"report":"daily"}' --created-by ops@example.com 2>>"$WORK/cli.log" | tail -n 1)"
check wait-success "$BASE" "$TOKEN" "$API_ID" "$CLI_ID" || fail "tasks did not succeed"
for _ in $(seq 1 60); do grep -q "ops@example.com" "$WORK/smtp.log" && break; sleep 0.5; done
grep -q "ops@example.com" "$WORK/smtp.log" || fail "no mail reached the SMTP server"
say "the creator's mail arrived"
FAILING_ID="$(FLASK_ENV_RUN tasks submit ALWAYS_FAILS 2>>"$WORK/cli.log" | tail -n 1)"
check json-logs "$BASE" "$FAILING_ID" "$WORK/worker-1.log" "$WORK/worker-2.log" || fail "JSON logs"

say "graceful stop: SIGTERM to each worker (as systemctl stop does), then to gunicorn"
for pid in "$W1_PID" "$W2_PID"; do
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && fail "worker $pid still running 30 s after SIGTERM"
  wait "$pid" || fail "worker $pid exited non-zero"
  [ "$(psql_db "SELECT status FROM worker WHERE pid = $pid")" = "STOPPED" ] || fail "worker $pid not STOPPED"
done
kill -TERM "$WEB_PID"
wait "$WEB_PID" || fail "gunicorn exited non-zero after SIGTERM"
[ "$(psql_db "SELECT count(*) FROM async_task WHERE status = 'PROCESSING'")" = "0" ] || fail "tasks left PROCESSING"

echo "deploy check passed: web :$WEB_PORT, workers $W1_PID $W2_PID, database $DB, redis $REDIS"
