"""Sink error classification: only errors caused by the event's data are permanent; refusals (credentials,
permissions, read-only) and everything that would hit any event are retried. No servers: the errors are built
the way the drivers build them."""

from __future__ import annotations

import struct

import psycopg
import pytest
from cassandra import AuthenticationFailed, InvalidRequest, OperationTimedOut, Unauthorized
from cassandra.cluster import NoHostAvailable
from neo4j.exceptions import Neo4jError, ServiceUnavailable, SessionExpired

from sinks.base import PermanentSinkError, SinkError, SinkRefusedError, TransientSinkError
from sinks.clickstream import classify_cassandra_error
from sinks.postgres import classify_postgres_error
from sinks.purchase_graph import classify_neo4j_error

REFUSED, TRANSIENT, PERMANENT = "refused", "transient", "permanent"


def kind(err: SinkError) -> str:
    if isinstance(err, SinkRefusedError):
        return REFUSED
    if isinstance(err, TransientSinkError):
        return TRANSIENT
    assert isinstance(err, PermanentSinkError)
    return PERMANENT


@pytest.mark.parametrize(("exc", "expected"), [
    # the server refuses us: privileges, a read-only transaction, a failed login
    (psycopg.errors.InsufficientPrivilege("permission denied for table order_view"), REFUSED),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), REFUSED),
    (psycopg.errors.InvalidPassword("password authentication failed"), REFUSED),
    (psycopg.errors.InvalidAuthorizationSpecification("role does not exist"), REFUSED),
    (psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "w"'), REFUSED),
    # the data: out of range, a bad value, NUL bytes, a constraint, a key too long to index
    (psycopg.errors.NumericValueOutOfRange("integer out of range"), PERMANENT),
    (psycopg.errors.UntranslatableCharacter("unsupported Unicode escape sequence"), PERMANENT),
    (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), PERMANENT),
    (psycopg.errors.CheckViolation("new row violates check constraint"), PERMANENT),
    (psycopg.errors.ProgramLimitExceeded("index row size 3456 exceeds btree version 4 maximum 2704"), PERMANENT),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), PERMANENT),
    # anything that would hit every event: down, shutting down, a missing table, a bug
    (psycopg.OperationalError("connection refused"), TRANSIENT),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), TRANSIENT),
    (psycopg.errors.UndefinedTable('relation "x.order_view" does not exist'), TRANSIENT),
    (psycopg.errors.SyntaxError("syntax error at or near"), TRANSIENT),
    (psycopg.errors.DeadlockDetected("deadlock detected"), TRANSIENT),
    (psycopg.errors.DiskFull("could not extend file"), TRANSIENT),
    (OSError("network unreachable"), TRANSIENT),
])
def test_postgres(exc: BaseException, expected: str) -> None:
    assert kind(classify_postgres_error(exc)) == expected


def neo4j_error(code: str, message: str = "m") -> Neo4jError:
    return Neo4jError._hydrate_neo4j(code=code, message=message)


@pytest.mark.parametrize(("exc", "expected"), [
    (neo4j_error("Neo.ClientError.Security.Unauthorized"), REFUSED),  # a wrong password: AuthError
    (neo4j_error("Neo.ClientError.Security.Forbidden"), REFUSED),
    (neo4j_error("Neo.ClientError.Security.TokenExpired"), REFUSED),
    (neo4j_error("Neo.ClientError.Security.AuthenticationRateLimit"), REFUSED),
    (neo4j_error("Neo.ClientError.Statement.AccessMode", "Writing in read access mode not allowed"), REFUSED),
    (neo4j_error("Neo.ClientError.General.ForbiddenOnReadOnlyDatabase"), REFUSED),
    (neo4j_error("Neo.ClientError.Schema.ConstraintValidationFailed"), PERMANENT),
    (neo4j_error("Neo.ClientError.Statement.TypeError"), PERMANENT),
    (OverflowError("Integer 1180591620717411303424 out of range"), PERMANENT),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), PERMANENT),
    (neo4j_error("Neo.ClientError.Statement.SyntaxError"), TRANSIENT),  # a bug: every event alike
    (neo4j_error("Neo.ClientError.Database.DatabaseNotFound"), TRANSIENT),
    (neo4j_error("Neo.TransientError.Transaction.DeadlockDetected"), TRANSIENT),
    (neo4j_error("Neo.DatabaseError.General.UnknownError"), TRANSIENT),
    (ServiceUnavailable("down"), TRANSIENT),
    (SessionExpired("gone"), TRANSIENT),
])
def test_neo4j(exc: BaseException, expected: str) -> None:
    assert kind(classify_neo4j_error(exc)) == expected


@pytest.mark.parametrize(("exc", "expected"), [
    (Unauthorized("User w has no MODIFY permission on <table cdcflow.page_views_by_user_day>"), REFUSED),
    (AuthenticationFailed("Failed to authenticate to 127.0.0.1"), REFUSED),
    (NoHostAvailable("Unable to connect", {"127.0.0.1:9042": AuthenticationFailed("bad credentials")}), REFUSED),
    (InvalidRequest("Key length of 70000 is longer than maximum of 65535"), PERMANENT),
    (InvalidRequest("ttl is too large. requested (800000000) maximum (630720000)"), PERMANENT),
    (struct.error("'i' format requires -2147483648 <= number <= 2147483647"), PERMANENT),
    (OverflowError("date value out of range"), PERMANENT),
    (InvalidRequest("unconfigured table page_views_by_user_day"), TRANSIENT),  # dropped meanwhile
    (InvalidRequest("Keyspace cdcflow does not exist"), TRANSIENT),
    (NoHostAvailable("Unable to connect", {"127.0.0.1:9042": ConnectionRefusedError(111, "refused")}), TRANSIENT),
    (OperationTimedOut("timed out"), TRANSIENT),
])
def test_cassandra(exc: BaseException, expected: str) -> None:
    assert kind(classify_cassandra_error(exc)) == expected
