#!/bin/sh
# shellcheck disable=SC2015,SC2016,SC2010
# ("A && say x 0 || say x $?" reports A's status; sh -c '...' expands later;
# ls | grep -c counts names we made.)
# The life of iceserv_*.deb on a Debian 12 machine booted with a real systemd.
#
# Run by tests/packaging/test_deb.py as root inside
# `unshare --mount --pid --fork`: every mount and process (systemd-nspawn and
# the container's systemd) dies with the namespace.  Outer part (no
# argument): overlay a tmpfs on the cached debootstrap root (never modified),
# copy in the two packages and the helpers, boot it with
# `systemd-nspawn --boot --private-network` (its own loopback, so the
# default ports are free) and run the inner part in the container's
# namespaces with nsenter.  Inner part (`inner`): install, compile,
# start/reload/busctl/journal/stop-drains, upgrade with a changed conffile,
# remove, purge, then replace Debian's icecc; it prints "CHECK name value"
# lines for the test to assert on.
# Environment: ROOT WORK DEB1 DEB2 HELPERS FAKEENV.
set -eu

say() { echo "CHECK $1 $2"; }

until_true() {  # until_true SECONDS COMMAND...: retry COMMAND every 0.2 s, bounded
	limit=$(($1 * 5)); shift
	n=0
	until "$@" >/dev/null 2>&1; do
		n=$((n + 1))
		[ "$n" -gt "$limit" ] && return 1
		sleep 0.2
	done
	return 0
}

prop() { systemctl show -p "$2" --value "$1"; }
listcs() { /usr/lib/iceserv/bin/python /root/helpers/incontainer.py listcs 2>/dev/null; }
listcs_has() { listcs | grep -q -- "$1"; }
state_is() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
apt_quiet() { DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef \
	-o Dpkg::Options::=--force-confold "$@" >/root/apt.log 2>&1; }
exists() { [ -e "$1" ] || [ -L "$1" ] && echo yes || echo no; }
busprop() { busctl get-property "org.icecream.$1" "/org/icecream/$1" "org.icecream.$1" "$2"; }

inner() {
	set +e  # report every step, even after a failure
	cd /root
	# --- install ---------------------------------------------------------------
	apt_quiet install ./iceserv1.deb && say install.rc 0 || say install.rc $?
	say install.version "$(dpkg-query -W -f='${Version}' iceserv)"
	for f in /usr/bin/icecc /usr/bin/iceccd /usr/bin/icecc-scheduler /usr/bin/iceserv \
		/usr/lib/icecc/bin/gcc /usr/libexec/icecc/bin/g++ /lib/systemd/system/iceccd.service \
		/etc/init.d/iceccd /etc/conf.d/iceccd /etc/iceserv/iceserv.toml \
		/usr/share/dbus-1/system.d/org.icecream.Daemon1.conf /usr/share/man/man8/iceccd.8.gz \
		/usr/lib/sysusers.d/iceserv.conf /usr/lib/tmpfiles.d/iceserv.conf \
		/etc/logrotate.d/iceserv; do
		say "install.file:$f" "$(exists "$f")"
	done
	say install.user "$(id -un icecream 2>/dev/null)"
	say install.cacheowner "$(stat -c %U /var/cache/icecream)"
	for svc in iceccd icecc-scheduler; do
		say "install.enabled.$svc" "$(systemctl is-enabled "$svc" 2>/dev/null || true)"
		say "install.active.$svc" "$(systemctl is-active "$svc" 2>/dev/null || true)"
	done
	say install.checkconfig "$(iceccd --check-config >/dev/null 2>&1 && echo ok || echo failed)"
	say install.version_line "$(icecc --version 2>&1 | head -n 1)"
	say install.lzo "$(/usr/lib/iceserv/bin/python -c 'import lzo; print(lzo.decompress(lzo.compress(b"x" * 99)) == b"x" * 99)')"
	mkdir -p /root/src && cd /root/src
	printf 'int answer(void) { return 42; }\n' > t.c
	ICECC_SCHEDULER_HOST=127.0.0.1 icecc gcc -c t.c -o t.o >icecc.out 2>&1 && say compile.rc 0 || say compile.rc $?
	say compile.object "$(objdump -t t.o 2>/dev/null | grep -c ' answer$' || nm t.o | grep -c answer)"
	PATH=/usr/lib/icecc/bin:$PATH gcc -c t.c -o t2.o >>icecc.out 2>&1 && say compile.link_rc 0 || say compile.link_rc $?
	say compile.link_object "$(exists t2.o)"
	cd /root

	# --- the services under systemd --------------------------------------------
	cat > /etc/conf.d/icecc-scheduler <<-CONF
	ICECC_SCHEDULER_NET_NAME="boot"
	ICECC_SCHEDULER_VERBOSITY="v"
	CONF
	cat > /etc/conf.d/iceccd <<-CONF
	ICECCD_NET_NAME="boot"
	ICECCD_SCHEDULER_HOST="127.0.0.1"
	ICECCD_HOST_NAME="bootnode"
	ICECCD_MAX_PROCESSES="2"
	ICECCD_VERBOSITY="vv"
	ICECCD_STOP_GRACE="60"
	CONF
	timeout 90 systemctl start icecc-scheduler iceccd && say start.rc 0 || say start.rc $?
	for svc in icecc-scheduler iceccd; do
		say "start.state.$svc" "$(prop "$svc" ActiveState)/$(prop "$svc" SubState)"
		say "start.type.$svc" "$(prop "$svc" Type)"
		say "start.user.$svc" "$(ps -o user= -p "$(prop "$svc" MainPID)")"
		say "start.syslogid.$svc" "$(prop "$svc" SyslogIdentifier)"
	done
	say start.daemon_status "$(prop iceccd StatusText)"
	until_true 60 listcs_has bootnode || say listcs.timeout yes
	say listcs.before "$(listcs | grep bootnode | tr -s ' ')"
	pid=$(prop iceccd MainPID)
	sed -i 's/^ICECCD_MAX_PROCESSES=.*/ICECCD_MAX_PROCESSES="3"/' /etc/conf.d/iceccd
	systemctl reload iceccd && say reload.rc 0 || say reload.rc $?
	until_true 60 listcs_has "/3" || say reload.timeout yes
	say reload.listcs "$(listcs | grep bootnode | tr -s ' ')"
	say reload.samepid "$([ "$(prop iceccd MainPID)" = "$pid" ] && echo yes || echo no)"

	# --- D-Bus on the container's system bus ------------------------------------
	say bus.daemon.max "$(busprop Daemon1 MaxProcesses)"
	say bus.daemon.draining "$(busprop Daemon1 Draining)"
	say bus.scheduler.hosts "$(busprop Scheduler1 HostCount)"
	say bus.scheduler.netname "$(busprop Scheduler1 NetName)"
	say bus.scheduler.listhosts "$(busctl call org.icecream.Scheduler1 /org/icecream/Scheduler1 \
		org.icecream.Scheduler1 ListHosts 2>&1 | tr '\n' ' ' | cut -c1-300)"
	busctl call org.icecream.Daemon1 /org/icecream/Daemon1 org.icecream.Daemon1 \
		SetMaxProcesses u 4 && say bus.setmax.rc 0 || say bus.setmax.rc $?
	until_true 30 listcs_has "/4" || say bus.setmax.timeout yes
	say bus.daemon.max_after "$(busprop Daemon1 MaxProcesses)"
	say bus.owner.daemon "$(busctl status org.icecream.Daemon1 2>/dev/null | sed -n 's/^Unit=//p')"
	say bus.owner.scheduler "$(busctl status org.icecream.Scheduler1 2>/dev/null | sed -n 's/^Unit=//p')"

	# --- the journal --------------------------------------------------------------
	journalctl -u iceccd -o json --no-pager > /root/journal.json
	/usr/lib/iceserv/bin/python - <<-'PY'
	import json
	records = [json.loads(line) for line in open("/root/journal.json")]
	ours = [r for r in records if "EVENT" in r]
	print("CHECK journal.records", len(ours))
	ready = [r for r in ours if r["EVENT"] == "service_ready"] or ours[:1]
	if ready:
	    r = ready[0]
	    print("CHECK journal.fields", " ".join(sorted(k for k in r if not k.startswith("_")
	                                                  and not k.startswith("__"))))
	    print("CHECK journal.event", r["EVENT"])
	    print("CHECK journal.unit", r.get("_SYSTEMD_UNIT"))
	    print("CHECK journal.priority", r.get("PRIORITY"))
	    print("CHECK journal.identifier", r.get("SYSLOG_IDENTIFIER"))
	    print("CHECK journal.message", r.get("MESSAGE"))
	reloaded = [r for r in ours if r["EVENT"] == "config_reloaded"]
	print("CHECK journal.reload_changed", reloaded[0].get("CHANGED") if reloaded else None)
	PY

	# --- stop drains ------------------------------------------------------------
	mkfifo /root/job.in
	/usr/lib/iceserv/bin/python /root/helpers/incontainer.py job /root/fakeenv.tar.gz \
		< /root/job.in > /root/job.out 2>&1 &
	jobpid=$!
	exec 9>/root/job.in
	until_true 60 grep -q STARTED /root/job.out || say drain.start_timeout yes
	# The structured journal says when the compiler runs (EVENT= is a journal field).
	until_true 60 sh -c 'journalctl -u iceccd EVENT=compiler_started -o cat | grep -q .' \
		|| say drain.running_timeout yes
	say drain.jobs_before "$(busprop Daemon1 JobsRunning)"
	systemctl stop --no-block iceccd
	until_true 30 state_is iceccd deactivating || say drain.deactivating_timeout yes
	until_true 30 sh -c '! /usr/lib/iceserv/bin/python /root/helpers/incontainer.py listcs | grep -q bootnode' \
		|| say drain.logout_timeout yes
	say drain.listed_while_stopping "$(listcs | grep -c bootnode)"
	say drain.state_while_job "$(prop iceccd ActiveState)"
	say drain.new_connection "$(/usr/lib/iceserv/bin/python -c 'import socket; socket.create_connection(("127.0.0.1", 10245), timeout=5); print("accepted")' 2>&1 | tail -n 1 | cut -c1-80)"
	echo finish >&9
	exec 9>&-
	wait "$jobpid" || true
	say drain.result "$(sed -n 's/^RESULT //p' /root/job.out)"
	until_true 60 state_is iceccd inactive || say drain.stop_timeout yes
	say drain.final "$(prop iceccd ActiveState)/$(prop iceccd Result)/$(prop iceccd ExecMainStatus)"
	say drain.stopped_event "$(journalctl -u iceccd -o json --no-pager | grep -c '"EVENT":"service_stopped"')"
	systemctl stop icecc-scheduler
	say stop.scheduler "$(prop icecc-scheduler ActiveState)/$(prop icecc-scheduler Result)"

	# --- upgrade: a changed conffile, one edited by the admin -------------------
	echo 'ICECCD_NICE_LEVEL="7"  # admin' >> /etc/conf.d/iceccd
	# iceserv2.deb changed the iceccd sample (edited here) and the TOML sample (not edited).
	apt_quiet install ./iceserv2.deb && say upgrade.rc 0 || say upgrade.rc $?
	say upgrade.version "$(dpkg-query -W -f='${Version}' iceserv)"
	say upgrade.kept "$(grep -c 'admin' /etc/conf.d/iceccd)"
	say upgrade.dist "$(grep -c 'UPGRADE-MARKER' /etc/conf.d/iceccd.dpkg-dist 2>/dev/null || echo 0)"
	say upgrade.toml "$(grep -c 'UPGRADE-MARKER' /etc/iceserv/iceserv.toml)"
	say upgrade.enabled "$(systemctl is-enabled iceccd 2>/dev/null || true)"
	say upgrade.active "$(systemctl is-active iceccd 2>/dev/null || true)"

	# --- remove, purge ---------------------------------------------------------
	apt_quiet remove iceserv && say remove.rc 0 || say remove.rc $?
	for f in /usr/bin/iceccd /usr/lib/iceserv /usr/lib/icecc/bin/gcc /lib/systemd/system/iceccd.service \
		/etc/conf.d/iceccd /etc/iceserv/iceserv.toml /var/cache/icecream; do
		say "remove.file:$f" "$(exists "$f")"
	done
	say remove.status "$(dpkg-query -W -f='${db:Status-Abbrev}' iceserv | tr -d ' ')"
	apt_quiet purge iceserv && say purge.rc 0 || say purge.rc $?
	for f in /etc/conf.d/iceccd /etc/conf.d/iceccd.dpkg-dist /etc/iceserv /etc/init.d/iceccd \
		/var/cache/icecream /var/log/icecream /etc/logrotate.d/iceserv /usr/lib/iceserv; do
		say "purge.file:$f" "$(exists "$f")"
	done
	say purge.status "$(dpkg-query -W -f='${db:Status-Abbrev}' iceserv 2>/dev/null | tr -d ' ')"
	say purge.systemd_state "$(ls /var/lib/systemd/deb-systemd-helper-enabled 2>/dev/null | grep -c icecc || true)"

	# --- Debian's icecc replaced ------------------------------------------------
	apt_quiet install --no-download icecc && say icecc.install_rc 0 || say icecc.install_rc $?
	sed -i 's/^ICECC_NETNAME=.*/ICECC_NETNAME="debnet"/' /etc/icecc/icecc.conf
	apt_quiet install ./iceserv1.deb && say replace.rc 0 || say replace.rc $?
	say replace.icecc_status "$(dpkg-query -W -f='${db:Status-Abbrev}' icecc | tr -d ' ')"
	say replace.initd "$(head -n 1 /etc/init.d/iceccd)"
	say replace.leftover "$(ls /etc/init.d | grep -c icecc-removed || true)"
	say replace.iceccconf "$(exists /etc/icecc/icecc.conf)"
	# icecc's rc?.d links (its postinst enabled its LSB iceccd) do not enable the native unit.
	say replace.sysvlinks "$(ls /etc/rc2.d | grep -c 'S..iceccd$' || true)"
	say replace.enabled "$(systemctl is-enabled iceccd 2>/dev/null || true)"
	timeout 90 systemctl start iceccd && say replace.start_rc 0 || say replace.start_rc $?
	say replace.state "$(prop iceccd ActiveState)/$(prop iceccd SubState)"
	pid=$(prop iceccd MainPID)
	say replace.cmdline "$(tr '\0' ' ' < "/proc/$pid/cmdline")"
	cmd=$(tr '\0' '\n' < "/proc/$pid/cmdline" | tail -n +3 | grep -v -- --foreground | tr '\n' ' ')
	# shellcheck disable=SC2086
	iceccd --check-config $cmd > /root/replace.config 2>&1 || true
	say replace.netname "$(grep '^  net_name' /root/replace.config | tr -s ' ')"
	say replace.logfile "$(grep '^  log_file' /root/replace.config | tr -s ' ')"
	say replace.basedir "$(grep '^  env_basedir' /root/replace.config | tr -s ' ')"
	systemctl stop iceccd
	echo "CHECK done yes"
}

if [ "${1:-}" = inner ]; then
	inner
	exit 0
fi

: "${ROOT:?}" "${WORK:?}" "${DEB1:?}" "${DEB2:?}" "${HELPERS:?}" "${FAKEENV:?}"
mount -t tmpfs tmpfs "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/m"
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/m"
M=$WORK/m
cp "$DEB1" "$M/root/iceserv1.deb"
cp "$DEB2" "$M/root/iceserv2.deb"
mkdir "$M/root/helpers"
cp "$HELPERS"/incontainer.py "$M/root/helpers/"
cp "$0" "$M/root/cycle.sh"
# The fake compiler environment of the drain job: static, so the chroot needs nothing else.
cp "$FAKEENV" "$M/root/fakeenv.tar.gz"

# A unique machine name: nspawn keeps /run/systemd/nspawn/propagate/NAME on the host
# ($$ is 1 in this pid namespace, so it cannot tell parallel runs apart).
machine=iceserv-pkg-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$M" \
	--machine="$machine" --boot --console=pipe </dev/null >"$WORK/boot.log" 2>&1 &
nspawn=$!
init=""
n=0
while [ -z "$init" ]; do
	init=$(pgrep -P "$nspawn" || true)
	n=$((n + 1))
	if [ "$n" -gt 300 ]; then echo "CHECK boot.timeout yes"; exit 1; fi
	sleep 0.1
done
in_container() { nsenter --target "$init" --mount --uts --ipc --net --pid --cgroup -- "$@"; }
n=0
until [ "$(in_container systemctl is-system-running 2>/dev/null)" = running ] \
	|| [ "$(in_container systemctl is-system-running 2>/dev/null)" = degraded ]; do
	n=$((n + 1))
	if [ "$n" -gt 300 ]; then echo "CHECK boot.timeout yes"; break; fi
	sleep 0.2
done
echo "CHECK boot.state $(in_container systemctl is-system-running 2>/dev/null || true)"
echo "CHECK boot.pid1 $(in_container cat /proc/1/comm)"
in_container /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/sh /root/cycle.sh inner \
	|| echo "CHECK inner.rc $?"
for f in apt.log journal.json job.out src/icecc.out; do
	[ -f "$M/root/$f" ] && sed "s|^|LOG $f: |" "$M/root/$f" | tail -n 40
done
in_container journalctl --no-pager -u iceccd -u icecc-scheduler 2>/dev/null | tail -n 40 | sed 's/^/LOG journal: /'
in_container systemctl poweroff 2>/dev/null || kill "$nspawn"
n=0
while kill -0 "$nspawn" 2>/dev/null && [ "$n" -lt 150 ]; do
	n=$((n + 1))
	sleep 0.2
done
kill -9 "$nspawn" 2>/dev/null || true
wait "$nspawn" || true
rm -rf "/run/systemd/nspawn/propagate/$machine"
