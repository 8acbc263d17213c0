"""README's "Security model" claims only what holds: each claim names the tests that fail if it breaks.

CLAIMS maps every bullet of the section (by its bold lead) to the claims it makes, and each claim to
test node ids (`tests/path/test_file.py::test_name`; a parametrised test by its function name). The
three tests below check the mapping against the README and the suite without running those tests:
a bullet added, renamed or removed, a test renamed or deleted, or a claim left without a test fails
here with a message saying what to do. Figures measured by benchmarks (tests/bench/) are not
claims here: speed is measured, never asserted.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HOW = "add the test node ids that back this claim to CLAIMS in tests/unit/test_security_claims.py"

U = "tests/unit/"
P = "tests/protocol/"
M = "tests/inmemory/"
E = "tests/e2e/"
R = "tests/reliability/"
F = "tests/fuzz/"

CLAIMS: dict[str, dict[str, list[str]]] = {
    "Keys first.": {
        "public keys log in": [
            U + "test_auth.py::test_valid_signature_logs_in_with_openssh_fingerprint",
            M + "test_transport_auth.py::test_ed25519_login_is_audited",
        ],
        "OpenSSH user certificates log in": [
            U + "test_certs.py::test_good_certificate_logs_in_with_its_details_in_the_audit",
            E + "test_e2e_policy.py::test_certificate_login",
        ],
        "passwords only for users given a password_bcrypt": [
            M + "test_policy.py::test_password_for_a_user_without_one_fails",
            M + "test_policy.py::test_password_login_with_the_right_password",
            E + "test_e2e_policy.py::test_password_login",
            E + "test_e2e_policy.py::test_wrong_password_is_refused",
        ],
        "password offered to every name once any user has one, else to none": [
            M + "test_auth_pipelining.py::test_password_is_offered_to_every_name_when_some_user_has_one",
            M + "test_auth_pipelining.py::test_password_is_offered_to_no_name_when_no_user_has_one",
            M + "test_policy.py::test_no_password_auth_at_all_without_password_users",
        ],
        "bcrypt runs in a thread pool of its own": [
            U + "test_threads.py::test_the_server_checks_passwords_in_a_pool_of_their_own",
        ],
        "at most max_password_checks at once; over it an attempt fails": [
            M + "test_auth_pipelining.py::test_over_the_global_cap_an_attempt_fails_and_counts",
            M + "test_auth_pipelining.py::test_reload_follows_the_costs_and_the_cap",
        ],
        "same work and delay for names without a password and unknown names": [
            M + "test_auth_pipelining.py::test_a_name_without_the_password_costs_the_same_as_carol",
            M + "test_policy.py::test_unknown_user_gets_the_same_failure_as_a_user_without_password",
            E + "test_e2e_policy.py::test_names_without_a_password_look_like_a_wrong_password",
        ],
        "ed25519, ECDSA and RSA user keys; RSA with rsa-sha2-256/512": [
            M + "test_transport_auth.py::test_rsa_sha2_and_ecdsa_logins_work",
            E + "test_e2e_auth.py::test_ecdsa_user_key",
        ],
        "RSA user keys below 2048 bits are refused": [
            U + "test_auth.py::test_small_rsa_key_is_refused",
            U + "test_certs.py::test_certificate_of_a_small_rsa_key_is_refused",
        ],
        "SHA-1 ssh-rsa and ssh-dss signatures are refused": [
            U + "test_auth.py::test_sha1_ssh_rsa_is_refused_even_with_a_valid_signature",
            U + "test_auth.py::test_sha1_signature_under_rsa_sha2_name_is_refused",
            U + "test_auth.py::test_ssh_dss_is_refused",
            M + "test_transport_auth.py::test_sha1_rsa_signature_refused",
            E + "test_e2e_auth.py::test_rsa_with_sha1_signatures_is_refused",
        ],
        "server-sig-algs lists the user-key algorithms: RSA keys work against the ed25519 host key": [
            M + "test_transport_auth.py::test_server_sig_algs_lists_user_key_algorithms",
            E + "test_e2e_auth.py::test_rsa_user_key_against_ed25519_only_host",
        ],
        "key blobs read as sshd reads them; a bad line logged with its reason and skipped; keys matched and "
        "fingerprinted as ssh-keygen writes them": [
            "tests/differential/test_blob_encodings_differential.py::test_odd_key_blobs_are_decided_as_sshd_decides",
            "tests/differential/test_blob_encodings_differential.py::test_odd_trusted_ca_keys_are_decided_as_sshd_decides",
            U + "test_key_type_policy.py::test_a_key_blob_is_read_as_sshd_reads_it",
            U + "test_key_type_policy.py::test_login_users_and_doctor_skip_a_line_sshd_refuses_and_keep_the_others",
        ],
    },
    "One authentication request at a time": {
        "pipelined requests wait and are answered in order": [
            M + "test_auth_pipelining.py::test_requests_up_to_the_waiting_limit_are_all_answered_in_order",
        ],
        "more than 4 waiting and the connection is cut": [
            M + "test_auth_pipelining.py::test_a_burst_of_pipelined_requests_is_cut",
        ],
        "each failure counts when decided; nothing waiting runs once max_auth_tries is reached": [
            M + "test_auth_pipelining.py::test_the_right_password_after_six_pipelined_wrong_ones_is_refused",
            M + "test_auth_pipelining.py::test_pipelined_keys_stop_at_the_limit_too",
        ],
        "a closed connection's waiting requests are dropped": [
            M + "test_auth_pipelining.py::test_a_closed_connections_waiting_requests_never_reach_bcrypt",
            M + "test_auth_pipelining.py::test_a_right_password_decided_after_the_client_left_takes_no_slot",
        ],
        "hanging up during a check counts against the source": [
            M + "test_auth_pipelining.py::test_leaving_during_authentication_counts_against_the_source",
        ],
        "password guessing never delays an operator's commands": [
            M + "test_auth_pipelining.py::test_authentication_never_uses_the_commands_runner",
            R + "test_auth_load.py::test_comphash_completes_while_guessers_pipeline_passwords",
        ],
        "a service other than ssh-connection ends the connection before any check": [
            M + "test_auth_pipelining.py::test_a_request_for_another_service_ends_the_connection_before_any_check",
        ],
    },
    "No key oracle.": {
        "a probe for a key that is not authorized gets no PK_OK": [
            U + "test_auth.py::test_probe_for_unknown_key_gets_no_pk_ok",
            U + "test_auth.py::test_probe_for_other_or_bad_user_gets_no_pk_ok",
            M + "test_transport_auth.py::test_unknown_key_gets_no_pk_ok",
        ],
        "such a probe counts as a failed attempt": [
            M + "test_transport_auth.py::test_unknown_key_gets_no_pk_ok",
            M + "test_transport_auth.py::test_six_probes_of_unknown_keys_end_the_connection",
        ],
        "every none request after the first counts as a failed attempt": [
            M + "test_transport_auth.py::test_only_the_first_none_request_is_free",
            M + "test_transport_auth.py::test_thousands_of_pipelined_none_requests_end_the_connection",
            M + "test_transport_auth.py::test_a_key_after_a_first_none_still_has_all_its_tries",
        ],
        "max_auth_tries is honoured whatever its value (Conch's 20 out of the way)": [
            M + "test_transport_auth.py::test_max_auth_tries_above_twenty_is_honoured",
        ],
        "after 6 failures the connection is closed": [
            M + "test_transport_auth.py::test_max_auth_tries_disconnects",
            M + "test_transport_auth.py::test_six_probes_of_unknown_keys_end_the_connection",
            M + "test_limits.py::test_the_sixth_failure_disconnects_with_the_reason",
        ],
    },
    "No account oracle at `none`.": {
        "no file is read before a none answer, nor before a none pipelined behind it, for every kind of name": [
            M + "test_user_probing.py::test_no_file_is_read_before_a_none_answer",
            M + "test_user_probing.py::test_with_a_trusted_ca_every_name_reads_the_same_files",
        ],
        "invalid user decided later; sshd's lines the same, in the same order": [
            M + "test_user_probing.py::test_sshds_lines_are_those_of_before_each_in_its_place",
            M + "test_user_probing.py::test_the_reason_still_follows_the_line_it_explains",
            M + "test_auth_log.py::test_each_kind_of_login_writes_sshds_line",
        ],
        "a failed password's answer waits its fixed delay regardless of the read": [
            M + "test_user_probing.py::test_a_failed_password_is_answered_its_delay_after_the_check",
            M + "test_user_probing.py::test_a_failed_password_writes_the_lines_of_every_name_behind_its_delay",
        ],
        "no read before a password refused without delay (not offered, last failure allowed)": [
            M + "test_user_probing.py::test_a_password_request_where_passwords_are_not_offered_reads_no_file_first",
            M + "test_user_probing.py::test_the_last_failure_allowed_reads_no_file_before_the_disconnect",
        ],
        "no line written before an answer sent at once, whatever the name": [
            M + "test_user_probing.py::test_an_answer_sent_at_once_costs_the_same_for_every_kind_of_name",
        ],
        "in the same order among conchcmd.log's lines; bounded; none lost to a bug deciding": [
            M + "test_user_probing.py::test_a_login_after_an_open_name_keeps_the_order_of_its_lines",
            M + "test_user_probing.py::test_the_login_grace_line_follows_the_lines_of_before",
            M + "test_user_probing.py::test_the_protocol_error_line_follows_the_lines_of_before",
            M + "test_user_probing.py::test_the_too_many_waiting_line_follows_the_lines_of_before",
            M + "test_user_probing.py::test_the_queue_stays_bounded_however_long_names_alternate",
            M + "test_user_probing.py::test_a_bug_deciding_one_name_loses_no_line_of_the_others",
            M + "test_user_probing.py::test_a_bug_writing_a_waiting_line_duplicates_none_of_the_others",
            R + "test_waiting_auth_lines.py::test_lines_waiting_at_sigterm_are_written_in_order",
        ],
        "not claimed: a publickey request reads authorized_keys before its answer, as sshd's": [
            M + "test_user_probing.py::test_a_publickey_request_reads_the_file_as_sshds_does",
        ],
    },
    "authorized_keys options, enforced": {
        "OpenSSH's quoting": [
            U + "test_policy_options.py::test_quoted_commas_stay_inside_the_value",
            U + "test_policy_options.py::test_escaped_quotes_inside_a_value",
            U + "test_authorized_keys.py::test_options_quoted_value_may_contain_commas_and_spaces",
        ],
        "from= with addresses, CIDR, wildcards and negation": [
            U + "test_policy_options.py::test_from_positive_patterns",
            U + "test_policy_options.py::test_from_negation_refuses_even_when_a_positive_pattern_matches",
            U + "test_policy_options.py::test_from_allows_listed_peers_and_refuses_others",
            M + "test_policy.py::test_from_is_checked_against_the_connection_peer",
            E + "test_e2e_policy.py::test_from_wildcards_and_negation_against_the_bound_source",
            E + "test_e2e_policy.py::test_from_refuses_a_source_outside_it",
        ],
        "from= host names are refused, never resolved": [
            U + "test_policy_options.py::test_from_host_name_patterns_are_refused_at_parse_time",
            U + "test_policy_options.py::test_from_with_a_host_name_refuses_the_key",
            U + "test_policy_options.py::test_from_host_name_line_is_refused_with_a_log_line_naming_it",
        ],
        "command= forces the command; the client's is kept in the audit as original_command": [
            M + "test_policy.py::test_forced_command_runs_instead_of_the_exec",
            M + "test_policy.py::test_forced_command_original_command_is_sanitised",
            E + "test_e2e_policy.py::test_forced_command_runs_and_the_audit_keeps_the_original",
            E + "test_e2e_auth.py::test_forced_command_runs_instead_of_the_clients",
        ],
        "a shell request runs the forced command too": [
            M + "test_policy.py::test_forced_command_runs_for_a_shell_request",
            M + "test_policy.py::test_forced_command_runs_for_a_shell_with_a_pty",
            E + "test_e2e_policy.py::test_forced_command_runs_for_an_interactive_login",
        ],
        "restrict, no-pty and pty apply in order": [
            U + "test_policy_options.py::test_restrict_and_pty_apply_in_order",
            M + "test_policy.py::test_pty_request_is_refused_for_a_no_pty_key_and_the_shell_is_plain",
            M + "test_policy.py::test_restrict_then_pty_allows_a_pty",
            E + "test_e2e_policy.py::test_no_pty_key_with_ssh_tt_is_refused_a_pty",
            E + "test_e2e_policy.py::test_pty_key_with_ssh_tt_gets_a_pty",
        ],
        "expiry-time= in local time, or UTC with Z": [
            U + "test_policy_options.py::test_expiry_time_in_utc",
            U + "test_policy_options.py::test_expiry_time_without_z_is_local_time",
            U + "test_policy_options.py::test_local_expiry_time_is_enforced_in_local_time",
            U + "test_policy_options.py::test_key_before_its_expiry_time_logs_in_and_after_it_is_refused",
            M + "test_policy.py::test_expiry_time_follows_the_server_clock",
            E + "test_e2e_policy.py::test_expiry_time_in_the_past_is_refused",
        ],
        "cert-authority with principals=": [
            U + "test_policy_options.py::test_cert_authority_with_principals",
            U + "test_certs.py::test_cert_authority_with_principals_replaces_the_user_name",
        ],
        "environment= is refused unless permit_user_environment": [
            U + "test_policy_options.py::test_environment_is_refused_unless_permitted",
            U + "test_policy_options.py::test_environment_line_is_refused_unless_permitted",
        ],
        "forwarding options are accepted and change nothing": [
            U + "test_policy_options.py::test_forwarding_options_are_accepted_and_change_nothing",
        ],
        "[no-]touch-required and [no-]verify-required apply to security keys, in order": [
            U + "test_policy_options.py::test_security_key_options_are_kept",
            M + "test_security_keys.py::test_no_touch_required_on_the_line_waives_the_touch",
        ],
        "any other option or a malformed value refuses the line, and the log names it": [
            U + "test_policy_options.py::test_unknown_options_are_refused_by_name",
            U + "test_policy_options.py::test_invalid_expiry_time_refuses_the_line",
            U + "test_policy_options.py::test_syntax_errors",
            U + "test_auth.py::test_key_on_a_line_with_an_unknown_option_is_refused",
            M + "test_transport_auth.py::test_key_with_options_is_refused_and_named_in_the_log",
        ],
    },
    "Certificates.": {
        "signed by a CA in trusted_user_ca_keys, the user name a principal": [
            U + "test_certs.py::test_good_certificate_logs_in_with_its_details_in_the_audit",
            U + "test_certs.py::test_wrong_principal_is_refused",
            U + "test_certs.py::test_principal_for_another_user_does_not_log_in_as_that_user",
            U + "test_certs.py::test_untrusted_ca_is_refused",
            U + "test_certs.py::test_no_trusted_ca_file_trusts_nothing",
        ],
        "or by a cert-authority key in the user's authorized_keys (principals=, else the user name)": [
            U + "test_certs.py::test_cert_authority_line_trusts_a_ca_for_this_user_only",
            U + "test_certs.py::test_cert_authority_without_principals_requires_the_user_name",
            U + "test_certs.py::test_cert_authority_with_principals_replaces_the_user_name",
        ],
        "the CA signature is checked, never SHA-1": [
            U + "test_certs.py::test_tampered_certificate_is_refused",
            U + "test_certs.py::test_certificate_signed_with_sha1_is_refused",
            U + "test_certs.py::test_sha1_ssh_rsa_cert_algorithm_is_refused",
            U + "test_cert_vectors.py::test_a_sha1_ca_signature_is_refused_though_it_verifies",
            U + "test_cert_vectors.py::test_a_sha1_signature_relabelled_as_sha2_does_not_verify",
        ],
        "the validity window": [
            U + "test_certs.py::test_time_window_edges",
            U + "test_certs.py::test_expired_certificate_is_refused",
            U + "test_certs.py::test_not_yet_valid_certificate_is_refused",
        ],
        "critical options force-command and source-address are enforced": [
            U + "test_certs.py::test_force_command_becomes_the_grants_forced_command",
            U + "test_certs.py::test_source_address_refuses_other_peers",
            E + "test_e2e_policy.py::test_certificate_force_command",
            E + "test_e2e_policy.py::test_certificate_source_address_elsewhere_is_refused",
        ],
        "any other critical option refuses the certificate": [
            U + "test_certs.py::test_unknown_critical_option_is_refused",
        ],
        "the permit-pty extension": [
            U + "test_certs.py::test_no_pty_certificate_grants_no_pty",
            E + "test_e2e_policy.py::test_certificate_without_permit_pty",
        ],
        "revoked_keys": [
            U + "test_certs.py::test_revoked_by_serial",
            U + "test_certs.py::test_revoked_by_key_id",
            U + "test_certs.py::test_revoked_by_the_ca_key",
            E + "test_e2e_policy.py::test_revoked_certificate",
            U + "test_file_caches.py::test_a_revoked_serial_added_by_cp_p_refuses_at_once",
            U + "test_file_caches.py::test_revoked_keys_re_read_after_a_same_size_same_mtime_replacement",
        ],
        "the audit names the key id, serial and CA fingerprint": [
            U + "test_certs.py::test_good_certificate_logs_in_with_its_details_in_the_audit",
            M + "test_policy.py::test_refused_certificate_is_audited_with_its_details",
        ],
    },
    "Security keys (FIDO2).": {
        "sk-ssh-ed25519 and sk-ecdsa-sha2-nistp256 keys and their certificates log in, verified as PROTOCOL.u2f": [
            U + "test_sk.py::test_openssh_token_signatures_verify",
            U + "test_sk.py::test_openssh_sk_certificates_are_read_and_their_ca_signature_checked",
            U + "test_skauth.py::test_openssh_accepts_the_software_tokens_signatures",
            M + "test_security_keys.py::test_a_touched_signature_logs_in_with_flags_and_counter_audited",
            M + "test_security_keys.py::test_certificate_of_an_sk_key_logs_in",
        ],
        "changed flags, counter, application or data do not verify": [
            U + "test_sk.py::test_flags_or_counter_changed_after_signing_are_a_bad_signature",
            U + "test_sk.py::test_wrong_application_and_wrong_data_are_a_bad_signature",
            M + "test_security_keys.py::test_an_sk_key_enrolled_for_another_application_is_another_key",
        ],
        "keys, signatures and certificates read as sshd reads them; anything else refused": [
            U + "test_sk.py::test_bad_ecdsa_points_and_curves_are_refused",
            U + "test_sk.py::test_ed25519_public_key_length_and_application_strings",
            U + "test_sk.py::test_trailing_bytes_are_refused",
            U + "test_sk.py::test_every_truncation_is_a_clean_refusal",
            U + "test_sk.py::test_ecdsa_signature_numbers",
            U + "test_sk.py::test_ed25519_signature_length",
            U + "test_sk.py::test_signature_type_must_be_the_keys_plain_sk_type",
            "tests/fuzz/test_fuzz_sk.py::test_sk_signatures",
            "tests/fuzz/test_fuzz_sk.py::test_sk_public_keys",
            "tests/fuzz/test_fuzz_sk.py::test_sk_certificates",
        ],
        "touch required unless no-touch-required on the line or in the certificate (both via cert-authority)": [
            M + "test_security_keys.py::test_no_touch_is_refused_by_default",
            M + "test_security_keys.py::test_no_touch_required_on_the_line_waives_the_touch",
            M + "test_security_keys.py::test_certificate_policy",
        ],
        "verify-required on the line or in the certificate (either) requires user verification": [
            M + "test_security_keys.py::test_verification_policy",
            M + "test_security_keys.py::test_certificate_policy",
        ],
        "pubkey_auth_options adds either requirement; its touch-required overrides no-touch-required": [
            U + "test_sk.py::test_requirements_combine_as_sshds",
            M + "test_security_keys.py::test_server_touch_required_overrides_no_touch_required",
            M + "test_security_keys.py::test_server_touch_required_overrides_the_certificates_no_touch_required",
            M + "test_security_keys.py::test_verification_policy",
        ],
        "ordinary keys are unaffected": [
            M + "test_security_keys.py::test_server_options_leave_ordinary_keys_alone",
        ],
        "audit carries sk_flags and sk_counter; a refusal says which requirement and what set it; sshd's log lines": [
            M + "test_security_keys.py::test_a_touched_signature_logs_in_with_flags_and_counter_audited",
            M + "test_security_keys.py::test_no_touch_is_refused_by_default",
            M + "test_security_keys.py::test_certificate_refusal_is_logged_as_sshd_logs_it",
        ],
        "the counter is recorded, not compared with earlier ones": [
            U + "test_sk.py::test_good_signatures_report_flags_and_counter",
        ],
        "server-sig-algs lists both algorithms": [
            M + "test_security_keys.py::test_server_sig_algs_lists_the_sk_algorithms",
        ],
    },
    "Modern algorithms only.": {
        "kex mlkem768x25519-sha256 then curve25519-sha256": [
            M + "test_transport_auth.py::test_banner_and_algorithms_are_modern_only",
            E + "test_e2e_auth.py::test_negotiated_and_offered_algorithms_are_modern",
        ],
        "ciphers chacha20-poly1305, AES-GCM and AES-CTR; EtM MACs; each works with OpenSSH": [
            M + "test_transport_auth.py::test_banner_and_algorithms_are_modern_only",
            M + "test_transport_crypto.py::test_each_cipher_and_mac_carries_bulk_output_across_rekeys",
            E + "test_e2e_ciphers.py::test_each_cipher_with_rekeying",
            E + "test_e2e_ciphers.py::test_each_etm_mac_with_rekeying",
        ],
        "host key ssh-ed25519, with an RSA host key rsa-sha2-512/256, never ssh-rsa": [
            M + "test_transport_auth.py::test_rsa_host_key_never_offers_sha1",
            E + "test_e2e_auth.py::test_keyscan_lists_only_the_ed25519_host_key",
        ],
        "no compression, no SHA-1 anywhere": [
            M + "test_transport_auth.py::test_banner_and_algorithms_are_modern_only",
            E + "test_e2e_auth.py::test_negotiated_and_offered_algorithms_are_modern",
            E + "test_e2e_auth.py::test_weak_algorithms_are_refused",
        ],
        "packets framed on the cryptography package's primitives (RFC and NIST layouts)": [
            U + "test_packets.py::test_chacha20_nonce_layout_matches_rfc7539",
            U + "test_packets.py::test_chacha_reused_contexts_seal_each_packet_as_fresh_ones_would",
            U + "test_packets.py::test_gcm_first_nonce_is_the_derived_iv_nist",
            U + "test_packets.py::test_any_flipped_bit_or_wrong_sequence_number_is_rejected",
            M + "test_transport_crypto.py::test_a_forged_packet_ends_the_connection_with_a_mac_error",
        ],
        "Ed25519 and X25519 from libsodium: cryptography's bytes and verdicts (stricter on keys of small order)": [
            U + "test_sodium.py::test_x25519_gives_openssls_public_values_and_secrets",
            U + "test_sodium.py::test_x25519_refuses_values_of_small_order_as_openssl_does",
            U + "test_sodium.py::test_an_ed25519_host_key_signs_the_bytes_conch_signs",
            U + "test_sodium.py::test_a_client_signature_gets_openssls_verdict",
            U + "test_sodium.py::test_any_key_and_signature_bytes_get_a_verdict_not_an_exception",
            U + "test_weak_ed25519_keys.py::test_verify_refuses_a_signature_forged_for_a_plain_key_of_small_order",
            E + "test_e2e_host_key_signatures.py::test_each_host_key_signature_is_verified_by_openssh_at_every_rekey",
        ],
        "Poly1305 tags of packets up to 12 KiB from libsodium: RFC 8439's tags, as cryptography's": [
            U + "test_packets.py::test_poly1305_rfc_8439_vectors",
            U + "test_packets.py::test_poly1305_same_tags_as_cryptography_and_only_the_right_tag_verifies",
        ],
        "ssh-audit: no failure, only the post-quantum warning": [
            E + "test_e2e_ciphers.py::test_ssh_audit_finds_no_failure_and_only_the_post_quantum_warning",
        ],
    },
    "Strict KEX": {
        "an unexpected message during the first key exchange ends the connection": [
            M + "test_transport_crypto.py::test_strict_kex_refuses_an_unexpected_message_during_the_initial_kex",
            M + "test_kex_order.py::test_strict_kex_ends_the_connection_at_any_message_in_the_initial_exchange",
            E + "test_e2e_ciphers.py::test_strict_kex_disconnects_on_a_message_injected_during_kex",
        ],
        "sequence numbers restart after every NEWKEYS": [
            M + "test_transport_crypto.py::test_strict_kex_restarts_sequence_numbers",
            E + "test_e2e_ciphers.py::test_each_cipher_with_rekeying",
            E + "test_e2e_ciphers.py::test_strict_kex_sequence_numbers_restart_at_every_rekey_with_asyncssh",
        ],
        "Terrapin: an injected packet is refused, a deleted one breaks the next MAC": [
            M + "test_kex_order.py::test_terrapin_injection_and_deletion_fails_against_strict_kex",
            M + "test_kex_order.py::test_deleting_the_first_encrypted_packet_alone_breaks_the_mac",
        ],
        "without strict KEX the truncation goes unnoticed": [
            M + "test_kex_order.py::test_without_strict_kex_the_truncation_goes_unnoticed_as_the_readme_warns",
            M + "test_kex_order.py::test_without_strict_kex_the_same_messages_are_tolerated_as_rfc_4253_allows",
        ],
        "ciphers and macs can be narrowed to GCM/CTR and non-EtM MACs": [
            M + "test_transport_crypto.py::test_configuration_narrows_what_is_offered",
            M + "test_transport_crypto.py::test_encrypt_and_mac_is_off_by_default_but_can_be_named",
        ],
    },
    "Each message only where sshd takes it.": {
        "one table decides, per phase, which messages are processed; the rest get UNIMPLEMENTED or a "
        "disconnect with a reason code": [
            M + "test_dispatch_policy.py::test_each_cell_gets_what_the_policy_says",
            M + "test_dispatch_policy.py::test_the_table_covers_every_phase_and_says_where_sshd_does_the_same",
            M + "test_message_fuzz.py::test_any_message_sequence_leaves_nothing_behind",
        ],
        "as sshd would (the cells that differ are listed)": [
            E + "test_e2e_dispatch_oracle.py::test_the_cell_agrees_with_sshd",
        ],
        "a stray ECDH_INIT signs nothing and switches no keys": [
            M + "test_kex_order.py::test_an_unsolicited_ecdh_init_gets_unimplemented_and_changes_nothing",
            M
            + "test_kex_order.py::test_a_second_ecdh_init_without_strict_kex_gets_unimplemented_and_no_second_signature",  # noqa: E501
        ],
        "no SERVICE_REQUEST or USERAUTH_REQUEST before the key exchange or after login": [
            M + "test_dispatch_policy.py::test_service_and_userauth_requests_before_the_key_exchange_are_refused",
            M + "test_dispatch_policy.py::test_only_the_connection_protocol_runs_after_authentication",
            M + "test_channel_rules.py::test_a_second_service_request_after_login_takes_no_slot_and_no_timer",
        ],
        "no rekey before login": [
            M + "test_dispatch_policy.py::test_the_server_starts_no_rekey_before_login",
            M + "test_dispatch_policy.py::test_each_cell_gets_what_the_policy_says",
        ],
        "KEXINIT and method messages only in their step; anything unexpected ends a strict initial exchange": [
            M + "test_kex_order.py::test_a_second_kexinit_during_a_rekey_gets_unimplemented_and_the_rekey_completes",
            M + "test_kex_order.py::test_a_second_kexinit_or_ecdh_init_in_the_initial_strict_exchange_ends_it",
            M + "test_kex_order.py::test_strict_kex_ends_the_connection_at_any_message_in_the_initial_exchange",
            M + "test_kex_order.py::test_ignore_and_debug_during_a_rekey_are_fine",
        ],
        "NEWKEYS only after the server's, otherwise a disconnect": [
            M + "test_kex_order.py::test_newkeys_twice_ends_the_connection",
            M + "test_transport_crypto.py::test_newkeys_before_the_key_exchange_is_refused",
            M + "test_kex_order.py::test_newkeys_during_a_rekey_the_server_started_ends_the_connection",
            M + "test_kex_order.py::test_newkeys_before_ecdh_init_in_a_rekey_ends_the_connection",
        ],
        "nothing at all after the server's DISCONNECT": [
            M + "test_dispatch_policy.py::test_messages_buffered_behind_a_disconnect_are_not_dispatched",
        ],
        "refusals logged once per kind per connection, before authentication not on their own line; "
        "the counts on the connection's last line": [
            M + "test_refusal_logs.py::test_a_message_refused_after_login_is_logged_once_with_its_count",
            M + "test_refusal_logs.py::test_before_login_refusals_have_no_line_of_their_own_only_the_count",
            M + "test_channel_rules.py::test_refused_opens_are_logged_once_with_a_count",
            M + "test_refusal_logs.py::test_refused_subsystem_requests_are_logged_once_with_a_count",
            M + "test_refusal_logs.py::test_refused_pty_and_malformed_requests_are_logged_once_each_with_a_count",
        ],
    },
    "Key-exchange values.": {
        "an INIT that is not exactly one string is a protocol error, as in sshd": [
            M + "test_kex_init_attacks.py::test_a_hostile_init_gets_no_reply_and_a_clean_disconnect",
            U + "test_kex_fastpath.py::test_an_init_that_is_not_exactly_one_string_is_refused_where_conch_answers_it",
            "tests/differential/test_kex_init_differential.py::test_the_init_is_answered_or_refused_as_by_sshd",
        ],
        "an all-zero X25519 result or a failing ML-KEM key is KEY_EXCHANGE_FAILED, with no signed reply": [
            M + "test_kex_init_attacks.py::test_a_hostile_init_gets_no_reply_and_a_clean_disconnect",
            U + "test_kex_fastpath.py::test_mlkem_bad_client_values_refused_as_by_conch",
            F + "test_fuzz_kex_init.py::test_mlkem768x25519_init",
        ],
        "hostile INITs sent to sshd and conchcmd, one listed difference; a fuzz target judges each INIT": [
            "tests/differential/test_kex_init_differential.py::test_the_init_is_answered_or_refused_as_by_sshd",
            F + "test_fuzz_kex_init.py::test_curve25519_init",
            F + "test_fuzz_kex_init.py::test_mlkem768x25519_init",
        ],
        "a wrongly guessed first key-exchange packet is dropped unread, as by sshd": [
            M + "test_kex_init_attacks.py::test_a_wrong_guess_is_dropped_unread",
            "tests/differential/test_kex_init_differential.py::"
            + "test_a_malformed_guessed_init_is_read_or_dropped_as_by_sshd",
        ],
        "a half-open key exchange holds under 24 KiB, not the client's KEXINIT": [
            M + "test_kex_init_attacks.py::test_half_open_key_exchanges_hold_little_memory",
        ],
        "a client's first line must be its version line, as in sshd, however the bytes are cut": [
            M + "test_kex_init_attacks.py::test_lines_before_the_version_line_are_refused_however_they_arrive",
            "tests/differential/test_kex_init_differential.py::"
            + "test_lines_before_the_client_version_line_end_the_connection_as_in_sshd",
        ],
        "a version line and a KEXINIT of over 4 KiB in one read are taken": [
            M + "test_kex_init_attacks.py::test_a_version_line_and_a_large_kexinit_in_one_read_are_taken",
            F + "test_fuzz_kex_init.py::test_the_first_flight_is_read_the_same_however_it_is_cut",
        ],
    },
    "Channel rules.": {
        "OPEN_CONFIRMATION or OPEN_FAILURE for a channel not waiting for one ends the connection": [
            M + "test_channel_rules.py::test_an_answer_to_an_open_nobody_made_ends_the_connection_and_every_command",
        ],
        "a WINDOW_ADJUST past 2^32-1 ends the connection": [
            M + "test_channel_rules.py::test_a_window_adjust_past_2_32_minus_1_ends_the_connection",
        ],
        "closing a connection closes every channel and stops every command, even if one fails to close": [
            M + "test_channel_rules.py::test_an_answer_to_an_open_nobody_made_ends_the_connection_and_every_command",
            M + "test_channel_rules.py::test_closing_a_connection_closes_every_channel_even_if_one_close_raises",
        ],
    },
    "A bug is not the client's fault.": {
        "a malformed packet is a protocol error counted against the source": [
            M + "test_internal_errors.py::test_a_truncated_packet_is_a_protocol_error_that_counts",
        ],
        "a bug ends only that connection, logged with its traceback once per place, and does not count": [
            M + "test_internal_errors.py::test_a_bug_is_logged_once_with_its_traceback_and_not_held_against_the_client",
            M + "test_internal_errors.py::test_parse_errors_and_bugs_are_told_apart",
        ],
        "a bug in a login check, realm or answer: no USERAUTH_FAILURE, no Failed line, no count; "
        "connection ended, traceback logged, audited as internal error": [
            M + "test_internal_errors.py::test_a_bug_in_a_login_check_is_an_internal_error_not_a_refused_login",
            M + "test_internal_errors.py::test_a_bug_in_answering_a_refusal_ends_the_connection_with_its_traceback",
            M + "test_internal_errors.py::test_a_refused_login_is_still_a_failure",
        ],
        "a bug in a channel open, channel request or Tab completion ends only that request, "
        "logged once per place with its traceback": [
            M + "test_channel_internal_errors.py::test_a_bug_opening_a_channel_refuses_the_channel_and_is_logged_once",
            M + "test_channel_internal_errors.py::test_a_bug_answering_a_channel_request_refuses_it_and_is_logged_once",
            M + "test_channel_internal_errors.py::test_a_bug_refusing_an_exec_is_audited_as_the_server_s_failure",
            M + "test_channel_internal_errors.py::test_a_bug_starting_a_command_ends_it_like_a_crash",
            P + "test_terminal_editing.py::test_a_bug_in_completion_rings_the_bell_and_logs_its_traceback_once",
            P + "test_session_errbacks.py::test_an_exec_whose_command_deferred_fails_ends_with_exit_status_1",
            P + "test_session_errbacks.py::test_a_shell_whose_command_deferred_fails_ends_once_per_place_logged",
            U + "test_commands.py::test_a_command_that_crashes_again_and_again_logs_one_traceback",
            U
            + "test_lastlog_internal_errors.py::test_a_bug_in_the_reading_path_ends_the_command_as_a_crash_logged_once",
            U + "test_threads.py::test_a_command_whose_runner_has_stopped_ends_as_on_a_bug",
        ],
    },
    "The server's own trouble is not the client's failure.": {
        "authorized_keys, CA and revocation files unreadable for a server-side reason: no strike, no sshd line": [
            M + "test_server_side_failures.py::test_an_unopenable_authorized_keys_file_is_no_strike_nor_invalid_user",
            M + "test_server_side_failures.py::test_an_unopenable_revoked_keys_file_refuses_without_a_strike",
            M + "test_server_side_failures.py::test_an_unopenable_ca_file_is_no_invalid_user_and_no_strike",
            M + "test_server_side_failures.py::test_fail2ban_counts_nothing_of_a_server_side_failure",
            E + "test_e2e_fdlimit.py::test_a_login_that_gets_the_last_descriptor_fails_without_a_strike",
        ],
        "the cause is logged once, then at most once a minute with a count": [
            M + "test_server_side_failures.py::test_the_error_line_comes_back_after_the_interval_with_a_count",
        ],
        "after max_auth_tries such answers the connection is closed without a strike": [
            M + "test_server_side_failures.py::test_a_client_that_keeps_trying_is_closed_without_a_strike",
        ],
        "a missing file is still the client's failure": [
            M + "test_server_side_failures.py::test_a_missing_file_is_still_an_invalid_user",
        ],
    },
    "Rekeying.": {
        "the server renews keys after 1 GiB or 1 hour": [
            M + "test_transport_crypto.py::test_client_initiated_and_time_based_rekeys",
            M + "test_transport_crypto.py::test_the_server_renews_the_keys_after_a_gib_or_an_hour_not_sooner",
        ],
        "client rekeys are followed under every cipher": [
            M + "test_transport_crypto.py::test_client_initiated_and_time_based_rekeys",
            M + "test_transport_crypto.py::test_each_cipher_and_mac_carries_bulk_output_across_rekeys",
            E + "test_e2e_ciphers.py::test_each_cipher_with_rekeying",
        ],
        "more than 10 client rekeys within 60 s, each after < 8 KiB: disconnected, others unaffected": [
            M + "test_kex_order.py::test_a_rekey_storm_is_cut_off_and_other_clients_are_unaffected",
            M + "test_kex_order.py::test_the_rekey_limits_are_the_figures_the_readme_states",
        ],
        "rekeys after more traffic are never counted": [
            M + "test_kex_order.py::test_rekeys_spread_out_in_time_or_after_traffic_are_never_cut_off",
            E + "test_e2e_limits.py::test_a_real_client_rekeying_often_is_not_cut_off",
        ],
        "a key exchange that does not finish within 60 s ends the connection (KEY_EXCHANGE_FAILED)": [
            M + "test_channel_rules.py::test_a_key_exchange_that_never_ends_is_cut_after_the_time_limit",
            M + "test_channel_rules.py::test_a_completed_rekey_leaves_no_timer",
        ],
        "channels stop producing output once 2 MiB waits behind a key exchange": [
            M + "test_channel_rules.py::test_no_channel_output_is_produced_while_keys_change",
        ],
    },
    "Quiet banner.": {
        "the banner is SSH-2.0-conchcmd, no Twisted version": [
            M + "test_transport_auth.py::test_banner_and_algorithms_are_modern_only",
            E + "test_e2e_auth.py::test_banner_does_not_name_twisted",
        ],
        "banner_version sets it": [
            M + "test_limits.py::test_banner_version_is_configurable",
        ],
    },
    "Nothing but sessions.": {
        "port forwarding (-L, -R, -W) is refused, the connection stays up": [
            M + "test_sessions.py::test_refused_channels_and_requests_keep_the_connection",
            E + "test_e2e_refusals.py::test_stdio_forwarding_is_refused_and_the_server_keeps_serving",
            E + "test_e2e_refusals.py::test_refused_local_forward_keeps_the_connection_up",
            E + "test_e2e_refusals.py::test_remote_forward_is_refused_and_the_command_still_runs",
        ],
        "agent and X11 forwarding, env and subsystems are refused, the channel still runs commands": [
            M + "test_sessions.py::test_agent_x11_env_and_subsystem_requests_are_refused_and_the_channel_serves",
            E + "test_e2e_refusals.py::test_sftp_subsystem_is_refused",
            E + "test_e2e_refusals.py::test_x11_forwarding_request_is_refused_and_the_command_runs",
        ],
        "each kind of refusal logged once per connection, whatever the names; the counts on its last line": [
            M + "test_channel_rules.py::test_refused_opens_are_logged_once_with_a_count",
            M + "test_refusal_logs.py::test_channel_opens_of_ever_new_types_are_one_kind_of_refusal",
            M + "test_refusal_logs.py::test_refused_subsystem_requests_are_logged_once_with_a_count",
            M + "test_refusal_logs.py::test_refused_pty_and_malformed_requests_are_logged_once_each_with_a_count",
        ],
    },
    "Host keys": {
        "created 0600": [
            U + "test_hostkeys.py::test_ensure_creates_an_ed25519_key_0600_with_its_pub",
            U + "test_hostkeys.py::test_ensure_ignores_a_permissive_umask",
        ],
        "the server refuses to start with a private host key others can read or write": [
            U + "test_hostkeys.py::test_load_refuses_a_private_key_others_can_access",
            E + "test_e2e_auth.py::test_serve_refuses_a_host_key_readable_by_others",
        ],
        "a host key with a passphrase stops serve; serve, keygen and doctor name the file and the fix": [
            U + "test_keyparse.py::test_serve_start_up_refuses_an_encrypted_host_key",
            U + "test_keyparse.py::test_keygen_says_the_host_key_is_encrypted",
            U + "test_keyparse.py::test_doctor_says_the_host_key_is_encrypted",
            E + "test_e2e_auth.py::test_serve_refuses_an_encrypted_host_key_without_a_traceback",
        ],
        "user names are checked before they are put into a path": [
            U + "test_authorized_keys.py::test_invalid_user_names",
            U + "test_authorized_keys.py::test_invalid_user_name_has_no_path_and_no_entries",
            M + "test_transport_auth.py::test_unknown_user_and_hostile_user_names_fail",
        ],
    },
    "Trusted files only": {
        "strict_modes is on by default": [
            U + "test_strict_modes.py::test_strict_modes_defaults_to_true_and_is_shown",
        ],
        "the file and every directory up to / owned by root or the server's user, not group/other writable": [
            U + "test_strict_modes.py::test_untrusted_authorized_keys_is_ignored_with_a_log_line",
            U + "test_strict_modes.py::test_the_servers_own_user_may_own_the_files",
            U + "test_strict_modes.py::test_a_trusted_layout_is_read",
            E + "test_e2e_auth.py::test_group_writable_authorized_keys_is_ignored",
        ],
        "a symlink is judged by where it leads": [
            U + "test_strict_modes.py::test_untrusted_authorized_keys_is_ignored_with_a_log_line",
            E + "test_e2e_auth.py::test_authorized_keys_through_a_symlink_into_a_sticky_dir_is_refused",
        ],
        "checked on the open file at every login attempt": [
            U + "test_strict_modes.py::test_a_loosened_directory_is_noticed_at_the_next_login",
            U + "test_strict_modes.py::test_a_file_replaced_between_open_and_check_is_not_trusted",
            M + "test_auth_files_attempt.py::test_each_connection_checks_the_directories_again",
        ],
        "within one connection a changed authorized_keys file is read and checked again": [
            M + "test_auth_files_attempt.py::test_a_file_changed_after_the_key_probe_is_read_again_for_the_signature",
        ],
        "an untrusted trusted_user_ca_keys trusts no CA; an untrusted revoked_keys refuses every key": [
            U + "test_strict_modes.py::test_untrusted_ca_file_trusts_no_ca",
            U + "test_strict_modes.py::test_untrusted_revoked_keys_refuses_every_key",
        ],
        "an untrusted host key or host key directory stops serve; no key is created there": [
            U + "test_strict_modes.py::test_host_key_directory_writable_by_others_is_refused",
            U + "test_strict_modes.py::test_no_host_key_is_created_in_an_untrusted_directory",
            U + "test_strict_modes.py::test_host_key_owned_by_another_user_is_refused",
            E + "test_e2e_auth.py::test_serve_refuses_a_host_key_directory_others_can_write",
        ],
        "each is logged with the path and the reason, and doctor reports it with a fix": [
            U + "test_strict_modes.py::test_untrusted_authorized_keys_is_ignored_with_a_log_line",
            U + "test_strict_modes.py::test_doctor_reports_each_untrusted_authorized_keys_file_with_a_fix",
            U + "test_strict_modes.py::test_doctor_reports_the_host_key_directory_ca_and_revoked_files",
        ],
        "group-writable is refused even when the group holds only the owner": [
            U + "test_strict_modes.py::test_untrusted_authorized_keys_is_ignored_with_a_log_line",
        ],
        "a key file that is not a regular file is refused even with strict_modes = false": [
            U + "test_strict_modes.py::test_a_non_regular_file_is_refused_without_blocking_even_when_loose",
        ],
    },
    "Abuse resistance.": {
        "unauthenticated connections are capped per source and in total": [
            P + "test_admission_liveness.py::test_per_source_cap_spares_other_sources",
            M + "test_limits.py::test_startup_cap_per_source",
            P + "test_admission_liveness.py::test_total_cap_lets_recently_authenticated_sources_in",
            M + "test_limits.py::test_global_cap_admits_known_operators",
            R + "test_flood.py::test_preauth_flood_from_one_source",
        ],
        "closed after the login grace time": [
            M + "test_transport_auth.py::test_login_grace_time_closes_silent_and_slow_clients",
            R + "test_timers.py::test_login_grace_time",
        ],
        "6 authentication attempts": [
            M + "test_transport_auth.py::test_max_auth_tries_disconnects",
            M + "test_policy.py::test_password_and_key_failures_count_together",
        ],
        "sources that keep failing are refused before key exchange for a doubling time": [
            P + "test_admission_liveness.py::test_penalty_after_repeated_strikes_doubles_and_is_capped",
            M + "test_limits.py::test_repeated_failures_penalise_only_that_source",
            R + "test_penalties.py::test_penalty_doubles_on_the_next_failure",
        ],
        "every other source, and operators who logged in recently, keep getting in": [
            P + "test_admission_liveness.py::test_total_cap_lets_recently_authenticated_sources_in",
            M + "test_limits.py::test_global_cap_admits_known_operators",
            R + "test_flood.py::test_distributed_flood_trusted_operator_gets_in",
            R + "test_penalties.py::test_failed_logins_penalise_that_source_only",
        ],
        "authenticated connections are capped per user and in total; the refusal names the limit": [
            M + "test_client_slots.py::test_one_user_cannot_take_every_slot",
            M + "test_client_slots.py::test_the_global_cap_names_max_clients",
            M + "test_transport_auth.py::test_max_clients_turns_away_and_frees_slots",
            E + "test_e2e_limits.py::test_one_user_holding_idle_connections_locks_out_nobody",
        ],
        "TCP keepalive frees the slots of peers that vanished": [
            M + "test_client_slots.py::test_tcp_keepalive_is_set_on_every_accepted_socket",
        ],
        "a connection the server ends frees its slot even while its output is backed up": [
            R + "test_slot_release.py::test_a_connection_ended_while_its_output_was_backed_up_frees_its_slot",
        ],
        "a peer that does not take the last bytes is cut after 5 s": [
            M + "test_limits.py::test_a_peer_that_takes_no_more_bytes_is_cut_five_seconds_after_the_close",
        ],
    },
    "Behind a load balancer": {
        "from= is checked against the header's address": [
            M + "test_proxy_protocol.py::test_from_is_checked_against_the_headers_address",
            E + "test_e2e_haproxy.py::test_from_admits_the_clients_address_through_the_proxy",
        ],
        "certificate source-address is checked against the header's address": [
            M + "test_proxy_protocol.py::test_certificate_source_address_is_checked_against_the_headers_address",
        ],
        "per-source caps and penalties count the client, not the proxy": [
            P + "test_proxied_connection.py::test_admission_decides_on_the_clients_address",
            M + "test_proxy_protocol.py::test_a_penalty_falls_on_the_client_not_on_the_proxy_or_its_neighbours",
            M + "test_proxy_protocol.py::test_per_source_startups_count_the_client_not_the_proxy",
            E + "test_e2e_haproxy.py::test_a_penalty_falls_on_the_failing_client_and_not_on_its_neighbour",
        ],
        "auth lines name the client only; the log and the audit name the proxy too": [
            M + "test_proxy_protocol.py::test_a_login_through_the_proxy_is_the_clients_in_logs_and_audit",
            E + "test_e2e_haproxy.py::test_from_admits_the_clients_address_through_the_proxy",
        ],
        "the header is read before anything looks at an address, in any pieces": [
            P + "test_proxied_connection.py::test_the_ssh_protocol_starts_after_the_header_with_the_clients_address",
            U + "test_proxy_header.py::test_ipv4_header_in_any_pieces_gives_the_client_and_the_bytes_after",
        ],
        "only proxy_from (default loopback) may connect; anyone else is refused before a byte is read": [
            P + "test_proxied_connection.py::test_a_connection_from_an_untrusted_address_is_refused_counted_and_logged",
            P + "test_proxied_connection.py::test_proxy_from_patterns_decide_as_from_does",
            U + "test_proxy_config.py::test_proxy_from_defaults_to_loopback_only",
            E + "test_e2e_haproxy.py::test_a_client_reaching_the_proxy_listener_directly_is_refused",
        ],
        "doctor reports a proxy_from that matches public addresses": [
            U + "test_proxy_config.py::test_doctor_refuses_a_proxy_from_that_trusts_the_internet",
            U + "test_addrspace.py::test_patterns_admitting_public_addresses_are_found",
            U + "test_addrspace.py::test_a_wildcard_never_admits_an_address_outside_its_estimate",
            U + "test_addrspace.py::test_doctor_reports_a_wide_proxy_from_and_names_the_public_part",
        ],
        "late, oversized (refused at the length field), malformed or missing headers: closed and counted": [
            P + "test_proxied_connection.py::test_a_bad_header_closes_the_connection_and_is_counted_against_the_proxy",
            P + "test_proxied_connection.py::test_a_header_not_complete_within_the_deadline_is_refused",
            U + "test_proxy_header.py::test_an_oversized_v2_header_is_refused_at_its_16th_byte",
            U + "test_proxy_header.py::test_anything_but_a_good_header_is_refused_with_a_reason",
            M + "test_proxy_protocol.py::test_a_client_speaking_ssh_straight_to_the_proxy_port_is_refused",
            F + "test_fuzz_proxy_header.py::test_the_reader_holds_a_bounded_buffer_and_returns_only_ip_addresses",
            F + "test_fuzz_proxy_header.py::test_ssh_only_after_a_good_header_and_everything_released",
        ],
        "a LOCAL or UNKNOWN header names no client: closed, not counted": [
            U + "test_proxy_header.py::test_local_and_unknown_headers_name_no_client",
            P + "test_proxied_connection.py::test_a_health_check_header_is_closed_without_a_client_or_a_refusal",
            E + "test_e2e_haproxy.py::test_haproxys_health_checks_are_closed_and_logged_once",
        ],
    },
    "Bounded resources.": {
        "output only as the client's window allows; commands wait when 512 KiB is queued": [
            P + "test_channel_and_shells.py::test_output_never_exceeds_the_window_and_packets_fit",
            P + "test_channel_and_shells.py::test_writers_wait_above_the_high_water_mark",
            P + "test_channel_and_shells.py::test_a_command_waits_once_512_kib_of_output_is_queued",
            M + "test_sessions.py::test_bulk_output_respects_the_client_window",
        ],
        "the input window follows what a channel holds: 256 KiB per channel, 4 MiB per connection": [
            P + "test_channel_and_shells.py::test_plain_shell_window_follows_what_it_holds",
            P + "test_channel_and_shells.py::test_a_connection_holds_at_most_four_mib",
            P + "test_channel_and_shells.py::test_channels_of_a_connection_share_one_budget",
            M + "test_input_flow.py::test_a_client_that_reads_nothing_finds_the_window_shut_and_loses_no_line",
        ],
        "a connection costs a bounded amount of memory, whatever it sends": [
            R + "test_input_memory.py::test_input_memory_is_bounded",
            R + "test_input_memory.py::test_three_connections_of_short_lines",
            R + "test_memory.py::test_client_that_stops_reading",
            R + "test_memory.py::test_two_mib_shell_line",
            R + "test_memory.py::test_client_with_a_huge_window_that_stops_reading_its_socket",
            M + "test_input_flow.py::test_a_pty_client_that_reads_nothing_cannot_make_line_redraws_pile_up",
            P + "test_terminal_editing.py::test_echo_waits_for_the_client_to_read_and_ctrl_c_still_clears_the_line",
            P + "test_terminal_editing.py::test_a_flood_of_tabs_queues_one_listing_which_still_completes",
        ],
        "lines, history and packets are capped": [
            P + "test_channel_and_shells.py::test_pty_line_too_long_is_refused_and_the_shell_goes_on",
            P + "test_hardening.py::test_history_is_bounded_in_bytes_too",
            P + "test_terminal_editing.py::test_history_keeps_only_history_size_lines",
            M + "test_sessions.py::test_plain_shell_discards_an_overlong_line_and_continues",
            M + "test_limits.py::test_oversized_preauth_packet_ends_the_connection",
        ],
        "a client that disconnects cancels its command; a hash stops at the next 1 MiB block": [
            P + "test_channel_and_shells.py::test_client_closing_cancels_the_command_and_drops_output",
            M + "test_sessions.py::test_client_vanishing_cancels_the_command",
            U + "test_comphash.py::test_cancel_event_set_mid_file_stops_between_reads",
            U + "test_comphash.py::test_a_hash_reads_in_1_mib_blocks_and_stops_at_the_next_one",
            E + "test_e2e_refusals.py::test_client_vanishing_mid_hash_cancels_the_work",
        ],
        "while a client does not read, the server stops reading from it: answers cannot pile up": [
            R + "test_unread_replies.py::test_answers_to_a_client_that_never_reads_do_not_pile_up",
            M + "test_channel_rules.py::test_a_logged_in_peer_that_never_reads_is_still_cut_by_the_idle_timeout",
        ],
        "malformed packets end only their own connection, with one log line": [
            M + "test_transport_auth.py::test_garbage_ends_only_that_connection",
            R + "test_garbage.py::test_garbage_connections",
            E + "test_e2e_auth.py::test_garbage_clients_are_dropped_cleanly",
        ],
    },
    "Audit.": {
        "every connection, authentication attempt, command and disconnect is one JSON line": [
            U + "test_audit.py::test_audit_log_writes_one_json_object_per_line_with_ts_and_event",
            M + "test_transport_auth.py::test_ed25519_login_is_audited",
            M + "test_transport_auth.py::test_max_auth_tries_disconnects",
            M + "test_sessions.py::test_command_audit_record",
            E + "test_e2e_exec.py::test_audit_records_one_exec",
        ],
        "line separators str.splitlines splits at are written as \\u escapes": [
            U + "test_audit.py::test_every_audit_record_is_one_line_for_any_line_based_reader",
        ],
        "no command runs unaudited: refused with status 126 until the log can be written": [
            U + "test_audit_failure.py::test_refuse_by_default_no_command_runs_unaudited_and_it_recovers",
            E + "test_e2e_audit_failure.py::test_a_full_audit_log_refuses_commands_until_there_is_room",
        ],
        'unless audit_failure = "continue"': [
            U + "test_audit_failure.py::test_continue_runs_commands_and_logs_the_failure",
        ],
    },
    "The audit file is not readable by others.": {
        "created 0600, or 0640 with audit_group's group, whatever the umask": [
            U + "test_audit_file.py::test_a_created_audit_file_is_0600_whatever_the_umask",
            U + "test_audit_file.py::test_with_audit_group_it_is_0640_with_that_group_whatever_the_umask",
        ],
        "also when SIGHUP reopens it after a rotation": [
            U + "test_audit_file.py::test_reopen_after_a_move_writes_to_a_new_file_at_the_path",
            U + "test_audit_file.py::test_reload_reopens_the_audit_file_whatever_becomes_of_the_config",
            E + "test_e2e_logrotate.py::test_logrotate_on_a_live_server_loses_and_repeats_no_record",
        ],
        "never loosens an existing file's mode, warns if it is looser": [
            U + "test_audit_file.py::test_an_existing_looser_file_is_left_alone_with_a_warning",
            U + "test_audit_file.py::test_an_existing_group_readable_file_is_looser_without_audit_group",
        ],
        "doctor reports a file others can read or write as a problem": [
            U + "test_doctor_audit_mode.py::test_a_file_others_can_read_or_write_is_a_problem_with_its_fix",
            U + "test_doctor_audit_mode.py::test_doctor_prints_the_problem_and_fails",
        ],
    },
    "comphash reads only inside the roots, race-free.": {
        "symlinks are resolved from held descriptors and checked again": [
            U + "test_safepath.py::test_symlinks_leading_outside_are_refused",
            U + "test_safepath.py::test_a_symlinked_directory_leading_outside_is_refused",
            U + "test_safepath.py::test_a_symlink_from_outside_into_a_root_is_followed",
            U + "test_comphash.py::test_symlink_inside_root_pointing_outside_is_refused",
        ],
        ".. returns to the descriptor already held": [
            U + "test_safepath.py::test_dotdot_after_a_symlink_is_the_physical_parent_like_the_kernel",
            U + "test_comphash.py::test_dotdot_escaping_the_root_is_refused",
        ],
        "swapping a directory or the file for a symlink, or moving a directory out, never hashes outside": [
            U + "test_safepath.py::test_swapping_an_intermediate_directory_for_a_symlink_never_hashes_outside",
            U + "test_safepath.py::test_swapping_the_file_itself_for_a_symlink_never_hashes_outside",
            U + "test_safepath.py::test_moving_a_walked_directory_out_of_the_root_never_reaches_its_new_parent",
            E
            + "test_e2e_paths.py::test_swapping_a_directory_for_a_symlink_during_hashes_over_ssh_never_hashes_outside",
        ],
        "the same holds for Tab-completion listings": [
            U + "test_safepath.py::test_completion_never_lists_names_outside_while_a_directory_is_swapped",
            P + "test_terminal_editing.py::test_tab_never_offers_paths_outside_the_roots",
        ],
        "hard links are not seen (a documented limit)": [
            U + "test_safepath.py::test_a_hard_link_inside_a_root_is_hashed_which_is_why_roots_must_not_be_writable",
        ],
    },
    "Fair hashing.": {
        "one user holds at most max_concurrent_per_user hash slots, by default max_concurrent - 1": [
            U + "test_comphash.py::test_per_user_limit_defaults_and_overrides",
            U + "test_comphash.py::test_one_user_leaves_a_slot_for_another",
            U + "test_comphash.py::test_comphash_command_gives_another_user_a_slot",
        ],
    },
    "Terminal output.": {
        "file names, log lines, completions and diagnostics quoting the client are sanitised": [
            P + "test_terminal_escapes.py::test_comphash_progress_and_result_on_a_pty_show_the_name_sanitised",
            P + "test_terminal_escapes.py::test_error_messages_quoting_a_path_are_sanitised_with_or_without_a_pty",
            P + "test_terminal_escapes.py::test_dispatcher_diagnostics_quoting_the_client_are_sanitised",
            P + "test_terminal_escapes.py::test_completion_lists_no_name_the_sanitiser_would_alter",
            P + "test_hardening.py::test_completion_does_not_offer_names_with_control_characters",
            U + "test_lastlog.py::test_lastlog_interactive_neutralises_terminal_controls",
            E + "test_e2e_shell.py::test_pty_shell_log_control_bytes_are_neutralised",
        ],
        "escape sequences, C1 and bidi overrides do not pass": [
            P + "test_terminal_escapes.py::test_the_sanitiser_passes_nothing_that_can_drive_or_reorder_a_terminal",
            P + "test_hardening.py::test_terminal_safe_output_replaces_c0_c1_and_broken_bytes",
        ],
        "every character the log lines escape as invisible is ? on a terminal": [
            P + "test_terminal_escapes.py::test_the_terminal_hides_exactly_what_logs_escape",
            P + "test_terminal_escapes.py::test_lastlog_shows_hidden_characters_of_a_log_line_as_question_marks",
        ],
        "lastlog -n and exit N take ASCII digits only": [
            U + "test_lastlog.py::test_lastlog_usage_errors",
            U + "test_commands.py::test_exit_status_takes_ascii_digits_only",
        ],
    },
    "Log lines.": {
        "user names and certificate key IDs have controls, separators and whitespace escaped": [
            U + "test_authlog.py::test_a_user_name_stays_one_word_of_one_line",
            U + "test_authlog.py::test_log_word_escapes_are_unambiguous",
            U + "test_authlog.py::test_certificate_in_sshds_words",
        ],
        "every main-log line and audit record naming a user escapes it; a hidden principal reaches none raw": [
            U + "test_hidden_characters.py::test_the_dispatcher_logs_and_audits_the_user_name_it_is_given_escaped",
            M + "test_hidden_user_names.py::test_a_hidden_principal_as_login_name_is_refused_and_escaped",
            M + "test_hidden_user_names.py::test_a_hidden_principal_beside_the_name_reaches_nothing_raw",
        ],
        "a user name cannot add an address fail2ban would ban (real fail2ban-regex)": [
            M + "test_auth_log.py::test_fail2ban_counts_only_the_clients_own_address",
            E + "test_e2e_fail2ban.py::test_real_logins_through_the_real_fail2ban_regex",
        ],
    },
    "Metrics carry no client text.": {
        "off by default": [
            U + "test_metrics.py::test_metrics_listen_is_unset_by_default_and_said_so",
            M + "test_metrics.py::test_no_metrics_without_metrics_listen",
        ],
        "label values from fixed sets only; a hostile command line counts as other": [
            U + "test_metrics.py::test_command_labels_come_from_fixed_sets",
            U + "test_metrics.py::test_auth_method_labels_are_the_rfc_names_or_other",
            U + "test_metrics.py::test_every_refusal_text_of_the_admission_control_has_its_kind",
            M + "test_metrics.py::test_client_text_never_becomes_a_label",
        ],
        "only GET /metrics; anything else 404": [
            M + "test_metrics.py::test_the_service_serves_get_metrics_on_metrics_listen_only",
            E + "test_e2e_metrics.py::test_only_get_metrics_is_served",
        ],
        "a request body is never stored": [
            M + "test_metrics.py::test_a_request_body_is_never_kept",
        ],
    },
}


@cache
def readme_leads() -> tuple[str, ...]:
    """The bold lead of each bullet of README's "## Security model" section, in order; a bullet
    without one is named by its first words, prefixed with '(no bold lead) '. The section's own
    subsections ("### Differences from sshd") are checked by the tests that read them."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Security model\n")
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1), len(text)) if i >= 0)
    leads = []
    for line in text[start:end].splitlines():
        if line.startswith("- "):
            lead = re.match(r"- \*\*(.+?)\*\*", line)
            leads.append(lead.group(1) if lead else "(no bold lead) " + line[2:60])
    return tuple(leads)


@cache
def defined_tests(path: str) -> frozenset[str]:
    """The test functions a file defines (`name` and `Class::name`), read with ast, not imported."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{f.name}" for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(n for n in names if n.split("::")[-1].startswith("test"))


def test_every_security_model_bullet_has_its_claims_and_every_entry_a_bullet() -> None:
    leads = readme_leads()
    problems = [
        f"README security model bullet {lead!r} has no entry in CLAIMS: list its claims and {HOW}"
        + (" (and give the bullet a bold lead: '- **Lead.** ...')" if lead.startswith("(no bold lead)") else "")
        for lead in leads
        if lead not in CLAIMS
    ]
    problems += [
        f"CLAIMS entry {lead!r} matches no bullet of README's security model: if the bullet was reworded, "
        "rename the entry to its bold lead; if the claim was dropped, remove the entry"
        for lead in CLAIMS
        if lead not in leads
    ]
    problems += [
        f"two security model bullets share the bold lead {lead!r}: give each its own"
        for lead in set(leads)
        if leads.count(lead) > 1
    ]
    assert not problems, "\n".join(problems)


def test_every_test_named_in_claims_exists() -> None:
    problems = []
    for lead, claims in CLAIMS.items():
        for claim, node_ids in claims.items():
            for node_id in node_ids:
                path, _, name = node_id.partition("::")
                name = name.split("[")[0]
                if not (ROOT / path).is_file():
                    problems.append(f"{lead!r} / {claim!r}: {path} does not exist")
                elif name not in defined_tests(path):
                    problems.append(f"{lead!r} / {claim!r}: {path} has no test {name}")
    assert not problems, (
        "tests named in CLAIMS are gone (renamed or deleted); point the claim at the tests that now back it:\n"
        + "\n".join(problems)
    )


def test_every_claim_has_a_test() -> None:
    bare = [f"{lead!r} / {claim!r}" for lead, claims in CLAIMS.items() for claim, ids in claims.items() if not ids]
    empty = [lead for lead, claims in CLAIMS.items() if not claims]
    problems = [f"security model bullet {lead!r} lists no claims: list them and {HOW}" for lead in empty] + [
        f"claim {c} has no test: {HOW}" for c in bare
    ]
    assert not problems, "\n".join(problems)
