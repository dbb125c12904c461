#!/bin/sh
# shellcheck disable=SC2015,SC2317
# ("A && say x 0 || say x $?" reports A's status; until_true calls functions.)
# The life of iceserv_*.deb on a Debian 12 machine whose services OpenRC runs.
#
# Run by tests/packaging/test_deb.py as root inside
# `unshare --mount --pid --net --fork`: every mount and process dies with
# the namespaces, and the services bind their default ports on the
# namespace's own loopback.  Outer part (no argument): overlay a tmpfs on
# the cached debootstrap root (never modified), copy in the package and the
# helpers, bring up lo and run the inner part chrooted there.  OpenRC is not
# PID 1 (booting the root would start its systemd): as
# tests/service/openrc_cycle.sh does, the inner part makes OpenRC's state
# in /run and drives the package's /etc/init.d scripts with the real
# openrc-run, rc-service and supervise-daemon.  Inner part (`inner`):
# install openrc from the root's apt cache, then iceserv with
# `apt-get install ./iceserv1.deb`; enable and start both services with
# rc-update/rc-service, see the daemon in the scheduler's listing, stop;
# purge; install Debian's icecc, change its /etc/icecc/icecc.conf, install
# iceserv over it and check that both services read that file (and
# icecc-conf-paths after it), that conf.d still overrides it, through a
# reload.  It prints "CHECK name value" lines for the test to assert on.
# Environment: ROOT WORK DEB1 HELPERS.
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

listcs() { /usr/lib/iceserv/bin/python /root/helpers/incontainer.py listcs 2>/dev/null; }
listcs_has() { listcs | grep -q -- "$1"; }
listcs_lacks() { ! listcs | grep -q -- "$1"; }
apt_quiet() { DEBIAN_FRONTEND=noninteractive apt-get -y -q \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >>/root/apt.log 2>&1; }
exists() { [ -e "$1" ] || [ -L "$1" ] && echo yes || echo no; }
status() { rc-service "$1" status >/dev/null 2>&1 && echo started || echo stopped; }
main_pid() { pgrep -P "$(cat "/run/$1.pid" 2>/dev/null || echo 0)"; }
logged() {  # logged SERVICE EVENT COUNT: the service's log has COUNT records of EVENT
	c=$(grep -c "\"event\": \"$2\"" "/var/log/icecream/$1.log" 2>/dev/null) || c=0
	[ "${c:-0}" -ge "$3" ]
}
args_of() {  # args_of PID: the program's arguments from --foreground on
	tr '\0' ' ' < "/proc/$1/cmdline" | sed -e 's/^.* --foreground/--foreground/' -e 's/ $//'
}

start_both() {  # start_both STEP NODE: rc-service start, then the facts about both programs
	for svc in icecc-scheduler iceccd; do
		rc-service "$svc" start >>/root/rc.log 2>&1 && say "$1.start_rc.$svc" 0 \
			|| say "$1.start_rc.$svc" $?
		until_true 60 logged "$svc" service_ready 1 || say "$1.ready_timeout.$svc" yes
		say "$1.status.$svc" "$(status "$svc")"
		pid=$(main_pid "$svc")
		say "$1.user.$svc" "$(ps -o user= -p "$pid")"
		say "$1.comm.$svc" "$(cat "/proc/$pid/comm")"
		say "$1.args.$svc" "$(args_of "$pid")"
	done
	until_true 60 listcs_has "$2" || say "$1.listcs_timeout" yes
	say "$1.listcs" "$(listcs | grep -- "$2" | tr -s ' ')"
}

stop_both() {  # stop_both STEP NODE: rc-service stop; the node leaves, nothing is left
	rc-service iceccd stop >>/root/rc.log 2>&1 && say "$1.stop_rc.iceccd" 0 \
		|| say "$1.stop_rc.iceccd" $?
	until_true 30 listcs_lacks "$2" || say "$1.logout_timeout" yes
	rc-service icecc-scheduler stop >>/root/rc.log 2>&1 && say "$1.stop_rc.icecc-scheduler" 0 \
		|| say "$1.stop_rc.icecc-scheduler" $?
	for svc in icecc-scheduler iceccd; do
		say "$1.stopped.$svc" "$(status "$svc")"
		say "$1.left.$svc" "$(pgrep -x "$svc" | wc -l)"
		say "$1.stopped_event.$svc" "$(grep -c '"event": "service_stopped"' "/var/log/icecream/$svc.log")"
	done
}

inner() {
	set +e  # report every step, even after a failure
	cd /root
	# A chroot: no package may start a service here (Debian icecc's postinst would).
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	apt_quiet install --no-download openrc && say openrc.rc 0 || say openrc.rc $?
	for d in started starting stopping inactive wasinactive failed scheduled daemons options \
		exclusive tmp; do
		mkdir -p "/run/openrc/$d"
	done
	echo default > /run/openrc/softlevel
	# A stand-in for the network service, so that depend()'s "need net" is resolved.
	printf '#!/sbin/openrc-run\ndepend() { provide net; }\nstart() { return 0; }\n' \
		> /etc/init.d/net.stub
	chmod 755 /etc/init.d/net.stub

	# --- install: nothing enabled or started ------------------------------------
	apt_quiet install ./iceserv1.deb && say install.rc 0 || say install.rc $?
	say install.initd "$(head -n 1 /etc/init.d/iceccd)"
	for svc in iceccd icecc-scheduler; do
		say "install.runlevel.$svc" "$(exists "/etc/runlevels/default/$svc")"
		say "install.status.$svc" "$(status "$svc")"
	done

	# --- enable and start as the README says, stop ------------------------------
	cat > /etc/conf.d/icecc-scheduler <<-CONF
	ICECC_SCHEDULER_NET_NAME="orc"
	ICECC_SCHEDULER_VERBOSITY="v"
	CONF
	cat > /etc/conf.d/iceccd <<-CONF
	ICECCD_VERBOSITY="v"
	ICECCD_NET_NAME="orc"
	ICECCD_SCHEDULER_HOST="127.0.0.1"
	ICECCD_HOST_NAME="orcnode"
	ICECCD_MAX_PROCESSES="2"
	CONF
	rc-update add icecc-scheduler default >/dev/null && rc-update add iceccd default >/dev/null \
		&& say enable.rc 0 || say enable.rc $?
	start_both plain orcnode
	stop_both plain orcnode

	# --- purge: the runlevel entries go with the scripts -------------------------
	apt_quiet purge iceserv && say purge.rc 0 || say purge.rc $?
	for f in /etc/init.d/iceccd /etc/runlevels/default/iceccd /etc/runlevels/default/icecc-scheduler \
		/usr/lib/iceserv /var/log/icecream; do
		say "purge.file:$f" "$(exists "$f")"
	done

	# --- Debian's icecc, replaced: its icecc.conf is read -----------------------
	apt_quiet install --no-download icecc && say icecc.install_rc 0 || say icecc.install_rc $?
	sed -i -e 's/^ICECC_NETNAME=.*/ICECC_NETNAME="debnet"/' \
		-e 's/^ICECC_SCHEDULER_HOST=.*/ICECC_SCHEDULER_HOST="127.0.0.1"/' \
		-e 's/^ICECC_MAX_JOBS=.*/ICECC_MAX_JOBS="2"/' /etc/icecc/icecc.conf
	say icecc.runlevel "$(exists /etc/runlevels/default/iceccd)"
	apt_quiet install ./iceserv1.deb && say replace.rc 0 || say replace.rc $?
	say replace.icecc_status "$(dpkg-query -W -f='${db:Status-Abbrev}' icecc | tr -d ' ')"
	say replace.initd "$(head -n 1 /etc/init.d/iceccd)"
	say replace.runlevel "$(exists /etc/runlevels/default/iceccd)"
	# conf.d names the node and the log detail only: the net name, scheduler and limit
	# come from icecc.conf.
	printf 'ICECCD_HOST_NAME="debnode"\nICECCD_VERBOSITY="v"\n' >> /etc/conf.d/iceccd
	echo 'ICECC_SCHEDULER_VERBOSITY="v"' >> /etc/conf.d/icecc-scheduler
	start_both replace debnode
	pid=$(main_pid iceccd)
	# shellcheck disable=SC2046 # the program's own arguments, as words
	iceccd --check-config $(args_of "$pid" | sed 's/^--foreground//') > /root/replace.config 2>&1
	say replace.netname "$(grep '^  net_name' /root/replace.config | tr -s ' ')"
	say replace.logfile "$(grep '^  log_file' /root/replace.config | tr -s ' ')"
	say replace.basedir "$(grep '^  env_basedir' /root/replace.config | tr -s ' ')"
	say replace.oldlog "$(exists /var/log/iceccd.log)$(exists /var/log/icecc_scheduler.log)"
	# conf.d overrides icecc.conf, also on reload (checkconfig reads the same files).
	echo 'ICECCD_MAX_PROCESSES="3"' >> /etc/conf.d/iceccd
	rc-service iceccd reload >>/root/rc.log 2>&1 && say reload.rc 0 || say reload.rc $?
	until_true 60 listcs_has "debnode.*/3" || say reload.timeout yes
	say reload.listcs "$(listcs | grep debnode | tr -s ' ')"
	say reload.samepid "$([ "$(main_pid iceccd)" = "$pid" ] && echo yes || echo no)"
	stop_both replace debnode
	echo "CHECK done yes"
}

if [ "${1:-}" = inner ]; then
	inner
	exit 0
fi

: "${ROOT:?}" "${WORK:?}" "${DEB1:?}" "${HELPERS:?}"
mount -t tmpfs tmpfs "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/m"
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/m"
M=$WORK/m
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
cp "$DEB1" "$M/root/iceserv1.deb"
mkdir "$M/root/helpers"
cp "$HELPERS"/incontainer.py "$M/root/helpers/"
cp "$0" "$M/root/openrc.sh"
ip link set lo up
chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/sh /root/openrc.sh inner \
	|| echo "CHECK inner.rc $?"
for f in apt.log rc.log replace.config; do
	[ -f "$M/root/$f" ] && sed "s|^|LOG $f: |" "$M/root/$f" | tail -n 40
done
for svc in icecc-scheduler iceccd; do
	[ -f "$M/var/log/icecream/$svc.log" ] && sed "s|^|LOG $svc: |" "$M/var/log/icecream/$svc.log" | tail -n 20
done
exit 0
