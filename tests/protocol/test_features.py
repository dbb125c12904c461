"""Tests of iceserv.protocol.features: every version dependency of reference §2.3 and §4.3."""

from __future__ import annotations

import pytest

from iceserv.protocol.connection import Connection
from iceserv.protocol.features import (
    Feature,
    features_of,
    min_version,
    required_version,
    supports,
)

F = Feature

#: The rows of §2.3, in the reference's order, plus the discovery thresholds of §4.3.
REFERENCE_ROWS = [
    (22, F.GET_CS_PREFERRED_HOST),  # GET_CS preferred_host
    (22, F.STATUS_TEXT_TO_CLIENT),  # remote daemon sends STATUS_TEXT to the client
    (23, F.STATUS_TEXT_FROM_JOB),  # STATUS_TEXT from compile child / env code
    (24, F.CS_CONF),  # scheduler sends CS_CONF after LOGIN
    (25, F.STATS_NOT_PONG),  # before 25 STATS also counted as a ping reply
    (26, F.LOGIN_NOREMOTE),  # LOGIN noremote
    (27, F.NO_PINGS),  # no application pings from 27
    (28, F.USE_CS_MATCHED_JOB_ID),  # USE_CS matched_job_id
    (29, F.MON_GET_CS_SHORT),  # MON_GET_CS short form
    (30, F.COMPILER_NAME),  # COMPILE_FILE compiler_name
    (31, F.GET_CS_IGNORE_UNVERIFIED),  # GET_CS ignore_unverified
    (31, F.VERIFY_ENV),  # client uses VERIFY_ENV
    (32, F.NATIVE_ENV_EXTRAFILES),  # GET_NATIVE_ENV compiler + extrafiles
    (34, F.GET_CS_MINIMAL_HOST_VERSION),  # GET_CS minimal_host_version
    (34, F.COMPILE_FILE_PATHS),  # COMPILE_FILE input_file, working_dir
    (35, F.SPLIT_DWARF),  # COMPILE_FILE output_file, dwarf_fission
    (35, F.COMPILE_RESULT_DWO),  # COMPILE_RESULT have_dwo
    (36, F.SCHEDULER_ANNOUNCEMENTS),  # announcements from >= 36; 268-byte UDP replies
    (37, F.NO_CS),  # scheduler may answer NO_CS
    (38, F.OBJC_LANG),  # client adds -x objective-c[++] for servers < 38
    (39, F.CLIENT_COUNT),  # client_count fields, UnknownJobId flag
    (40, F.ZSTD),  # algorithm word, zstd
    (41, F.SINGLE_ARGS_LIST),  # COMPILE_FILE single args list
    (41, F.NATIVE_ENV_FULL_PATH),  # GET_NATIVE_ENV compiler is a full path
    (42, F.ENV_FEATURES),  # supported/required_features, compression
    (43, F.GET_CS_NICENESS),  # GET_CS niceness
    (33, F.DISCOVERY_REPLY_VERSIONED),  # §4.3: replies carry version and start time
    (38, F.DISCOVERY_REPLY_BIG_ENDIAN),  # §4.3: big-endian 268-byte reply
]
ROW_IDS = [f"{feature.name}@{threshold}" for threshold, feature in REFERENCE_ROWS]
ALL_VERSIONS = range(21, 44)


class TestThresholds:
    """Each feature switches on at its reference threshold."""

    def test_every_feature_is_a_reference_row(self):
        """The Feature enum has exactly the reference's rows, no more and no fewer."""
        features = [f for _, f in REFERENCE_ROWS]
        assert len(features) == len(set(features)) == 28
        assert set(features) == set(Feature)

    @pytest.mark.parametrize(("threshold", "feature"), REFERENCE_ROWS, ids=ROW_IDS)
    def test_threshold(self, threshold, feature):
        """Absent just below its threshold, present from it on."""
        assert not supports(threshold - 1, feature)
        assert supports(threshold, feature)
        assert supports(43, feature)
        assert not supports(21, feature)


class TestFeaturesOf:
    """features_of lists what a negotiated version has."""

    @pytest.mark.parametrize("version", ALL_VERSIONS)
    def test_matches_the_rows(self, version):
        """A version has exactly the features whose threshold it reaches."""
        expected = {f for threshold, f in REFERENCE_ROWS if threshold <= version}
        assert features_of(version) == expected

    def test_ends(self):
        """Protocol 21 has no feature; 43 has them all."""
        assert features_of(21) == frozenset()
        assert features_of(43) == frozenset(Feature)

    def test_grows_with_the_version(self):
        """A newer protocol never loses a feature."""
        for version in range(21, 43):
            assert features_of(version) <= features_of(version + 1)


class TestConnectionSupports:
    """Connection.supports asks about the negotiated version."""

    @pytest.mark.parametrize(("threshold", "feature"), REFERENCE_ROWS, ids=ROW_IDS)
    def test_at_threshold(self, threshold, feature):
        """A connection negotiated at a threshold has the feature; one below does not."""
        for version, expected in ((threshold, True), (threshold - 1, False)):
            if version < 21:
                continue
            conn = Connection(version=43)
            conn.receive_data(version.to_bytes(4, "little") * 2)
            conn.next_event()
            assert conn.supports(feature) is expected


class TestMinimalVersions:
    @pytest.mark.parametrize(("threshold", "feature"), REFERENCE_ROWS, ids=ROW_IDS)
    def test_min_version_is_the_threshold(self, threshold, feature):
        """min_version names the reference's first version with a feature."""
        assert min_version(feature) == threshold

    def test_required_version(self):
        """GET_CS's minimal_host_version: 21 for nothing, else the newest feature's threshold."""
        assert required_version() == 21
        assert required_version(Feature.VERIFY_ENV) == 31
        assert required_version(Feature.VERIFY_ENV, Feature.SPLIT_DWARF) == 35
        assert required_version(Feature.ENV_FEATURES, Feature.SPLIT_DWARF) == 42
