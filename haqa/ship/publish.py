"""Publishing a bundle beyond the device: the model in an Ollama (the ollama client: the GGUF as a
blob, then a model with the Modelfile's parameters), and the bundle in a Hugging Face repo
(huggingface_hub, which uploads through the Hub's xet protocol when hf_xet is installed;
HF_HUB_DISABLE_XET=1 uses plain LFS uploads, e.g. for an endpoint without xet). Whatever goes wrong is
one UserError, without the token."""

from __future__ import annotations

import glob
import os

from haqa.bundle.lock import REDEPLOY as _REDEPLOY
from haqa.bundle.verify import SIGNATURE, SUMS
from haqa.errors import UserError
from haqa.secrets import redact, remember
from haqa.ship.verify import Bundle

OLLAMA_PORT = 11434


def ollama_parameters(bundle: Bundle) -> dict[str, int | float | str]:
    """The PARAMETER lines of the bundle's Modelfile, as the values Ollama's API takes."""
    if "Modelfile" not in bundle.files:
        raise UserError(f"{bundle.root} has no Modelfile, so the Ollama parameters are unknown", hint=_REDEPLOY)
    params: dict[str, int | float | str] = {}
    for line in (bundle.root / "Modelfile").read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "PARAMETER":
            value = parts[2].strip()
            try:
                params[parts[1]] = int(value)
            except ValueError:
                try:
                    params[parts[1]] = float(value)
                except ValueError:
                    params[parts[1]] = value
    return params


def ollama_client(url: str, where: str):
    """An ollama client for url, once an Ollama server answers there (something else is refused)."""
    import httpx
    import ollama

    client = ollama.Client(host=url, trust_env=False, timeout=600)
    where = redact(where)
    try:
        client.list()
    except (ConnectionError, httpx.HTTPError) as e:
        raise UserError(f"no Ollama server answers {where} ({type(e).__name__})",
                        hint="start Ollama there (`ollama serve`), point --ollama-host at one, "
                             "or leave out --ollama") from None
    except ollama.ResponseError as e:
        raise UserError(f"the server {where} does not answer as Ollama does: /api/tags gave HTTP {e.status_code} "
                        f"({_short(e.error)})", hint=_NOT_OLLAMA) from None
    except Exception as e:  # an answer the ollama client cannot read (HTML, other JSON)
        raise UserError(f"the server {where} does not answer as Ollama does: its /api/tags answer is not Ollama's "
                        f"({type(e).__name__}: {_short(str(e))})", hint=_NOT_OLLAMA) from None
    return client


_NOT_OLLAMA = "point --ollama-host at an Ollama server (its API is on port 11434), or leave out --ollama"


def _short(text: str) -> str:
    return redact(" ".join(str(text).split()))[:200]


def create_ollama_model(client, bundle: Bundle, name: str) -> str:
    """Upload the GGUF as a blob and create `name` from it with the Modelfile's parameters; returns
    the blob's digest."""
    import httpx
    import ollama

    params = ollama_parameters(bundle)
    try:
        digest = client.create_blob(bundle.root / bundle.model_file)
        client.create(model=name, files={bundle.model_file: digest}, parameters=params, stream=False)
    except ollama.ResponseError as e:
        raise UserError(f"Ollama refused to create {name}: {_short(e.error)} (HTTP {e.status_code})",
                        hint=_NOT_OLLAMA if e.status_code in (404, 405) else None) from None
    except (ConnectionError, httpx.HTTPError) as e:
        raise UserError(f"lost the Ollama server while creating {name}: {type(e).__name__}: {_short(str(e))}") from None
    except Exception as e:  # an answer the ollama client cannot read
        raise UserError(f"creating {name} in Ollama failed: the server's answer is not Ollama's "
                        f"({type(e).__name__}: {_short(str(e))})", hint=_NOT_OLLAMA) from None
    return digest


def check_hub_repo(repo: str) -> None:
    """A UserError unless `repo` is a Hugging Face repo id (checked by huggingface_hub itself)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(f"--to-hf {repo!r} is not a Hugging Face repo name: {e}",
                        hint="namespace/name or name, like me/smollm2-135m-haqa: letters, digits, '-', '_' and "
                             "'.', at most 96 characters, not starting or ending with '-' or '.'") from None


def push_to_hub(bundle: Bundle, repo: str, private: bool) -> str:
    """create_repo (exist_ok) and upload_folder of every listed file plus SHA256SUMS; the commit URL.
    Whatever goes wrong (a bad name, the network, the Hub) is one UserError, without the token."""
    from huggingface_hub import HfApi, get_token

    check_hub_repo(repo)
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        token = get_token()
    except Exception as e:  # a token exchange (HF_OIDC_RESOURCE) that failed
        raise UserError(f"could not get a Hugging Face token: {type(e).__name__}: {redact(str(e))}") from None
    if not token:
        raise UserError("no Hugging Face token for --to-hf",
                        hint="set HF_TOKEN, or run `hf auth login` once (the token is never printed)")
    remember(token)  # whichever way get_token() found it, it is masked in everything haqa prints
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    signature = [SIGNATURE] if (bundle.root / SIGNATURE).is_file() else []  # so the Hub copy can be verified
    try:
        api.create_repo(repo, exist_ok=True, private=private or None)
        info = api.upload_folder(repo_id=repo, folder_path=bundle.root,
                                 allow_patterns=[glob.escape(n) for n in sorted([*bundle.files, SUMS, *signature])],
                                 commit_message=f"haqa bundle {bundle.label}")
    except Exception as e:  # only huggingface_hub runs here; each failure gets its message
        raise _hub_failure(e, repo, endpoint) from None
    return info.commit_url


def _hub_failure(e: Exception, repo: str, endpoint: str) -> UserError:
    """The message for what huggingface_hub raised: an HTTP error, a network failure, or an answer that
    is not the Hub's (its HTTP library differs between versions, so transport errors go by their names)."""
    from huggingface_hub.errors import HfHubHTTPError

    detail = redact(" ".join(str(e).split()))[:300]
    name = type(e).__name__
    check = "check the network and HF_ENDPOINT (unset, it is https://huggingface.co)"
    if isinstance(e, HfHubHTTPError) and getattr(e.response, "status_code", None):
        status = e.response.status_code
        detail = redact(" ".join((e.server_message or str(e).splitlines()[0]).split()))[:300]
        if status >= 500:
            return UserError(f"the Hub at {endpoint} answered HTTP {status} while uploading to {repo}: {detail}",
                             hint=f"a failure on the Hub's side: try again later; {check}")
        return UserError(f"the Hub at {endpoint} refused the upload to {repo} (HTTP {status}): {detail}",
                         hint="check the repo name and that the token may write to it (`hf auth whoami`)")
    if "Connect" in name and "Timeout" not in name:
        return UserError(f"cannot connect to the Hub at {endpoint}: {detail}", hint=check)
    if isinstance(e, OSError) or "Timeout" in name or any(c.__name__ == "TransportError" for c in type(e).__mro__):
        return UserError(f"the connection to the Hub at {endpoint} broke while uploading to {repo}: {name}: {detail}",
                         hint=f"{check}; then run the same command again")
    return UserError(f"the Hub at {endpoint} did not answer as a Hugging Face Hub does while uploading to {repo} "
                     f"({name}: {detail})", hint="check that HF_ENDPOINT points at a Hugging Face Hub (unset, it is "
                                                  "https://huggingface.co)")

