"""HTTP destinations: ``dicomweb`` (STOW-RS, dicomweb-client) and ``orthanc`` (Orthanc REST, orthanc-api-client).

Both libraries retry on their own; dicomweb-client's retries are switched off and every request
carries the destination's timeout, so the backoff and the attempt count are ``deliver``'s alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as orthanc_errors

from node.config import Destination, mask_url
from node.dispatch.errors import DeliveryError, Failure, http_is_transient, status_is_transient
from node.dispatch.objects import Outgoing

logger = logging.getLogger(__name__)

_STORED = (
    "Success",
    "AlreadyStored",
)  # Orthanc keeps (or, with OverwriteInstances, replaces) a same-UID copy


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def _cause(exc: BaseException) -> str:
    """The socket-level reason inside a wrapped connection error, e.g. ``[Errno 111] Connection refused``."""
    seen: BaseException | None = exc
    while seen is not None:
        found = _ERRNO.search(str(seen))
        if found:
            return found.group(0)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _session(dest: Destination) -> requests.Session:
    if dest.token:
        session = create_session()
        session.headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
        return session
    if dest.username:
        return create_session_from_user_pass(
            dest.username, dest.password.get_secret_value() if dest.password else ""
        )
    return create_session()


def _http_error(where: str, what: str, response: requests.Response | None) -> DeliveryError:
    if response is None:
        return DeliveryError(f"{where}: {what} failed without an HTTP response", transient=True)
    code = response.status_code
    body = " ".join(response.text.split())[:200] if response.text else ""
    hint = {
        401: " (check username/password or token)",
        403: " (not allowed for these credentials)",
        404: " (check the URL)",
    }.get(code, "")
    return DeliveryError(
        f"{where}: {what} answered HTTP {code} {response.reason}{hint}{': ' + body if body else ''}",
        transient=http_is_transient(code),
    )


def send_dicomweb(dest: Destination, items: Sequence[Outgoing]) -> None:
    """STOW-RS every object in one multipart request (PS3.18 10.5)."""
    assert dest.url is not None
    where = f"{dest.name} ({mask_url(dest.url)})"
    session = _session(dest)
    try:
        client = DICOMwebClient(url=dest.url, session=session, timeout=dest.timeout)
    except ValueError as exc:
        session.close()
        raise DeliveryError(f"{where}: bad DICOMweb URL: {exc}", transient=False) from exc
    client.set_http_retry_params(retry=False)
    try:
        answer = client.store_instances([item.dataset() for item in items])
    except requests.HTTPError as exc:
        raise _http_error(where, "STOW-RS", exc.response) from exc
    except requests.Timeout as exc:
        raise DeliveryError(f"{where}: no STOW-RS answer within {dest.timeout:g} s", transient=True) from exc
    except requests.ConnectionError as exc:
        raise DeliveryError(f"cannot connect to {where}: {_cause(exc)}", transient=True) from exc
    except requests.RequestException as exc:
        raise DeliveryError(f"{where}: STOW-RS failed: {exc}", transient=False) from exc
    except ValueError as exc:  # an answer of an unexpected media type
        raise DeliveryError(f"{where}: unreadable STOW-RS answer: {exc}", transient=True) from exc
    finally:
        session.close()
    # PS3.18 Table 10.5.3-1: the Store Instances Response lists each refused object with a reason.
    failures = []
    for entry in answer.get("FailedSOPSequence", []):
        uid = str(entry.get("ReferencedSOPInstanceUID", "?"))
        reason = int(entry.get("FailureReason", 0x0110))
        failures.append(Failure(uid, status_is_transient(reason), f"STOW-RS failure reason 0x{reason:04X}"))
    if failures:
        raise DeliveryError.of(dest.name, failures)
    logger.info("stored %d object(s) at %s by STOW-RS", len(items), where)


def _orthanc_failure(
    item: Outgoing, where: str, exc: orthanc_errors.OrthancApiException
) -> tuple[Failure, bool]:
    """(failure, whether the destination itself is at fault so the other objects need not be tried)."""
    uid = item.sop_instance_uid
    if isinstance(exc, orthanc_errors.ConnectionError):
        return Failure(uid, True, f"cannot connect to {where}: {_cause(exc)}"), True
    if isinstance(exc, orthanc_errors.TimeoutError):
        return Failure(uid, True, f"{where}: no answer to POST /instances"), True
    if isinstance(exc, orthanc_errors.HttpError) and exc.http_status_code is not None:
        code = int(exc.http_status_code)
        text = "" if not exc.msg or exc.msg == str(code) else exc.msg
        if code in (401, 403):
            text = "not authorized (check username/password or token)"
        elif code == 404:
            text = "not found (check the URL)"
        return (
            Failure(
                uid, http_is_transient(code), f"{where}: POST /instances answered HTTP {code} {text}".rstrip()
            ),
            code in (401, 403, 404) or http_is_transient(code),
        )
    return Failure(uid, False, f"{where}: {exc}"), True


def send_orthanc(dest: Destination, items: Sequence[Outgoing]) -> None:
    """Upload every object with ``POST /instances`` (Orthanc REST API)."""
    assert dest.url is not None
    where = f"{dest.name} ({mask_url(dest.url)})"
    client = OrthancApiClient(
        dest.url,
        user=dest.username,
        pwd=dest.password.get_secret_value() if dest.password else None,
        api_token=dest.token.get_secret_value() if dest.token else None,
    )
    failures: list[Failure] = []
    try:
        for n, item in enumerate(items):
            try:
                # ``upload()`` takes no timeout, so a hung server would block the worker: post directly.
                response = client.post("instances", data=item.data, timeout=dest.timeout)
                status = response.json().get("Status") if response.content else None
            except orthanc_errors.OrthancApiException as exc:
                failure, stop = _orthanc_failure(item, where, exc)
                if stop and n == 0:
                    raise DeliveryError(failure.reason, transient=failure.transient) from exc
                failures.append(failure)
                if stop:
                    failures += [
                        Failure(i.sop_instance_uid, failure.transient, failure.reason) for i in items[n + 1 :]
                    ]
                    break
                continue
            except ValueError as exc:  # not JSON
                failures.append(Failure(item.sop_instance_uid, True, f"{where}: unreadable answer: {exc}"))
                continue
            if status not in _STORED:
                failures.append(
                    Failure(item.sop_instance_uid, False, f"{where}: upload answered status {status!r}")
                )
            else:
                logger.info("stored %s at %s (%s)", item.sop_instance_uid, where, status)
    finally:
        client.close()
    if failures:
        raise DeliveryError.of(dest.name, failures)
