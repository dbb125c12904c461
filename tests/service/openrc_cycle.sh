#!/bin/sh
# Drive iceserv's OpenRC scripts with the real openrc-run in a throwaway root.
#
# Run by tests/service/test_openrc.py as root inside
# `unshare --mount --pid --fork`, so every mount and process below dies with
# the namespace.  Outer part (no argument): overlay a tmpfs on the cached
# Debian root (never modified), bind the Python and the repository at their
# own paths, write entry-point scripts, run `iceserv install-system-files`,
# write test conf.d files, then run the inner part in the chroot.  Inner
# part (`inner`): start (resolving "need net" through a stand-in net
# service), check, reload, restart and stop each service in $SERVICES
# and print "CHECK name value" lines for the test to assert on.
# Environment: ROOT WORK PY BINDS SERVICES SCHEDULER_PORT DAEMON_PORT NETNAME.
set -eu

count_events() {  # count_events LOG EVENT: records of EVENT in LOG (0 while LOG does not exist)
	c=$(grep -c "\"event\": \"$2\"" "$1" 2>/dev/null) || c=0  # grep: 1 no match, 2 no file
	echo "${c:-0}"
}

wait_for_event() {  # wait_for_event LOG EVENT COUNT: until LOG has COUNT records of EVENT
	# (A missing LOG counts 0: "[ '' -lt 1 ]" would fail, end the loop and not wait at all.)
	n=0
	while [ "$(count_events "$1" "$2")" -lt "$3" ]; do
		n=$((n + 1))
		[ "$n" -gt 300 ] && return 1
		sleep 0.1
	done
	return 0
}

main_pid() {  # main_pid SERVICE: the supervised program (the pidfile names supervise-daemon)
	pgrep -P "$(cat "/run/$1.pid")"
}

report() {  # report SERVICE STEP: one CHECK line per fact about the running program
	pid=$(main_pid "$1")
	echo "CHECK $1.$2.pid $pid"
	echo "CHECK $1.$2.user $(ps -o user= -p "$pid")"
	echo "CHECK $1.$2.comm $(cat "/proc/$pid/comm")"
	echo "CHECK $1.$2.args $(tr '\0' ' ' < "/proc/$pid/cmdline" | sed -e 's/^.* --foreground/--foreground/' -e 's/ $//')"
	echo "CHECK $1.$2.capeff $(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$pid/status")"
	echo "CHECK $1.$2.nonewprivs $(sed -n 's/^NoNewPrivs:[[:space:]]*//p' "/proc/$pid/status")"
	echo "CHECK $1.$2.status $(rc-service "$1" status >/dev/null 2>&1 && echo started || echo stopped)"
}

inner() {
	for d in started starting stopping inactive wasinactive failed scheduled daemons options \
		exclusive tmp; do
		mkdir -p "/run/openrc/$d"
	done
	echo default > /run/openrc/softlevel
	for svc in $SERVICES; do
		rc-update add "$svc" default >/dev/null
	done
	for svc in $SERVICES; do
		log="/var/log/icecream/$svc.log"
		rc-service "$svc" start
		wait_for_event "$log" service_ready 1 || echo "CHECK $svc.start.timeout yes"
		report "$svc" start
		echo "CHECK $svc.start.net $([ -e /run/openrc/started/net.stub ] && echo started)"
		sed -i 's/^# RELOAD: //' "/etc/conf.d/$svc"
		rc-service "$svc" reload
		wait_for_event "$log" config_reloaded 1 || echo "CHECK $svc.reload.timeout yes"
		echo "CHECK $svc.reload.changed $(grep '"event": "config_reloaded"' "$log" | tail -n 1)"
		report "$svc" reload
		rc-service "$svc" restart
		wait_for_event "$log" service_ready 2 || echo "CHECK $svc.restart.timeout yes"
		report "$svc" restart
	done
	for svc in $SERVICES; do
		rc-service "$svc" stop
		echo "CHECK $svc.stop.status $(rc-service "$svc" status >/dev/null 2>&1 && echo started || echo stopped)"
		echo "CHECK $svc.stop.left $(pgrep -x "$svc" | wc -l)"
		echo "CHECK $svc.stop.exit $(grep -c '"event": "service_stopped"' "/var/log/icecream/$svc.log")"
	done
	for svc in $SERVICES; do
		sed "s/^/LOG $svc: /" "/var/log/icecream/$svc.log"
	done
}

if [ "${1:-}" = inner ]; then
	inner
	exit 0
fi

: "${ROOT:?}" "${WORK:?}" "${PY:?}" "${BINDS:?}" "${SERVICES:?}"
mount -t tmpfs tmpfs "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/m"
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/m"
M=$WORK/m
mount -t proc proc "$M/proc"
mount --bind /dev "$M/dev"
chmod 755 "$M/root"
for d in $BINDS; do
	mkdir -p "$M$d"
	mount --bind "$d" "$M$d"
done

mkdir -p "$M/opt/iceserv/bin"
for entry in iceccd:daemon icecc-scheduler:scheduler; do
	printf '#!%s\nimport sys\nfrom iceserv.app.%s import main\nsys.exit(main())\n' \
		"$PY" "${entry#*:}" > "$M/opt/iceserv/bin/${entry%%:*}"
	chmod 755 "$M/opt/iceserv/bin/${entry%%:*}"
done
"$PY" -m iceserv.app.cli install-system-files --root "$M" --prefix /usr --init openrc \
	--bindir /opt/iceserv/bin --no-man

cat > "$M/etc/conf.d/icecc-scheduler" <<EOF
ICECC_SCHEDULER_PORT="$SCHEDULER_PORT"
ICECC_SCHEDULER_INTERFACE="lo"
ICECC_SCHEDULER_NET_NAME="$NETNAME"
ICECC_SCHEDULER_VERBOSITY="v"
# RELOAD: ICECC_SCHEDULER_PERSISTENT_CLIENT_CONNECTION="yes"
EOF
cat > "$M/etc/conf.d/iceccd" <<EOF
ICECCD_PORT="$DAEMON_PORT"
ICECCD_INTERFACE="lo"
ICECCD_NET_NAME="$NETNAME"
ICECCD_SCHEDULER_HOST="127.0.0.1:$SCHEDULER_PORT"
ICECCD_MAX_PROCESSES="2"
ICECCD_VERBOSITY="v"
ICECCD_STOP_GRACE="5"
# RELOAD: ICECCD_MAX_PROCESSES="3"
EOF
# A stand-in for the network service, so that depend()'s "need net" is resolved.
printf '#!/sbin/openrc-run\ndepend() { provide net; }\nstart() { return 0; }\n' \
	> "$M/etc/init.d/net.stub"
chmod 755 "$M/etc/init.d/net.stub"
# Debian's SysV scripts in a minbase root only add dependency warnings.
rm -f "$M/etc/init.d/hwclock.sh" "$M/etc/init.d/procps"
cp "$0" "$M/tmp/openrc_cycle.sh"
chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SERVICES="$SERVICES" \
	/bin/sh /tmp/openrc_cycle.sh inner
