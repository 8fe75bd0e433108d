"""mitmproxy entry script: `mitmdump -s addons/memory.py`.

The addons run in this order, each hook in each addon in turn:
- LocalUsers closes connections from other local users before anything is read;
- Boundary removes what no client may send (and checks a reverse listener's Host) before any other addon
  reads the request;
- Guard judges where the client sends a request before the request path may point it elsewhere;
- Hosts, Projects, ProjectNames, RulesWatcher, Sdk and Store hold the request path's settings. RulesWatcher is configured
  before Store and Sdk, which read the rules; Sdk starts before Store, whose start-up awaits while the proxy
  already listens, so that the first requests find the SDK path;
- Endpoints answers http://memproxy/... before the request path sees it;
- RequestPath gives LLM requests their memory, and says it is ready once the addons before it are;
- Redact runs after the request path is done with the request's credentials.
"""

from memproxy.addons.boundary import Boundary
from memproxy.addons.endpoints import Endpoints
from memproxy.addons.guard import Guard
from memproxy.addons.hosts import Hosts
from memproxy.addons.localusers import LocalUsers
from memproxy.addons.projectnames import ProjectNames
from memproxy.addons.projects import Projects
from memproxy.addons.redact import Redact
from memproxy.addons.requestpath import RequestPath
from memproxy.addons.ruleswatcher import RulesWatcher
from memproxy.addons.sdk import Sdk
from memproxy.addons.store import Store

hosts, projects, names, rules = Hosts(), Projects(), ProjectNames(), RulesWatcher()
sdk, store = Sdk(rules), Store(rules)
memory = RequestPath(hosts, projects, names, rules, store, sdk)
addons = [
    LocalUsers(),
    Boundary(),
    Guard(sdk),
    hosts,
    projects,
    names,
    rules,
    sdk,
    store,
    Endpoints(memory, rules, store, projects, sdk),
    memory,
    Redact(store, sdk),
]
