{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "podgrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podgrace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podgrace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podgrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "podgrace.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------------- */}}

{{- define "podgrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podgrace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The operator pod only: the test Pod (component: test) must not match the Deployment or Service. */ -}}
{{- define "podgrace.operatorSelectorLabels" -}}
{{ include "podgrace.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "podgrace.labels" -}}
helm.sh/chart: {{ include "podgrace.chart" . }}
{{ include "podgrace.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podgrace
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------------------ */}}

{{- define "podgrace.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Operator scope ---------------------------------------------------------------------------------- */}}

{{- /* Fails early on a configuration the schema cannot express clearly. */ -}}
{{- define "podgrace.validate" -}}
{{- if and .Values.rbac.create (not .Values.rbac.clusterWide) (empty .Values.watchNamespaces) -}}
{{- fail "rbac.clusterWide=false needs watchNamespaces: the namespaced Roles are created in those namespaces" -}}
{{- end -}}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) -}}
{{- fail (printf "watchNamespaces has duplicates: %v" .Values.watchNamespaces) -}}
{{- end -}}
{{- if eq (int .Values.operator.livenessPort) (int .Values.operator.metricsPort) -}}
{{- fail "operator.livenessPort and operator.metricsPort must differ" -}}
{{- end -}}
{{- end -}}

{{- define "podgrace.args" -}}
- run
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness-port={{ .Values.operator.livenessPort }}
- --metrics-port={{ .Values.operator.metricsPort }}
- --workers={{ .Values.operator.workers }}
- --resync-seconds={{ .Values.operator.resyncSeconds }}
{{- if .Values.operator.verbose }}
- --verbose
{{- end }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* RBAC rules: the only API access the operator has. tests/chart/test_chart_rbac.py holds the same list. */}}

{{- define "podgrace.rules.namespaced" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "get"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end -}}

{{- define "podgrace.rules.profiles" -}}
- apiGroups: ["podgrace.dev"]
  resources: ["shutdownprofiles"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["podgrace.dev"]
  resources: ["shutdownprofiles/status"]
  verbs: ["get", "patch"]
{{- end -}}

{{/* Admission policy ------------------------------------------------------------------------------- */}}

{{- /* The stop signals a ShutdownProfile may name (operator/podgrace/core/signals.py Signal), as a CEL list. */ -}}
{{- define "podgrace.stopSignals" -}}
['SIGTERM', 'SIGQUIT', 'SIGWINCH', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2']
{{- end -}}

{{- /* podgrace's exec preStop scripts (operator/podgrace/core/hook_intent.py ExecSleep and SignalAndWait), as a CEL
raw string holding the RE2 pattern hook_intent.admission_pattern() writes (tests/chart/test_chart_admission.py
checks it is that one, and matches it against the scripts). */ -}}
{{- define "podgrace.hookPattern" -}}
r'^# podgrace graceful stop\nsleep [0-9]+(\nm=1\nfor d in /proc/\[0-9\]\*; do\n  read -r c <"\$d/comm" \|\| continue\n  case \$c in nginx\) ;; \*\) continue ;; esac\n  read -r s <"\$d/stat" \|\| continue\n  set -- \$\{s##\*\) \}\n  c=; read -r c <"/proc/\$2/comm"\n  case \$c in nginx\) ;; \*\) m=\$\{d#/proc/\}; break ;; esac\ndone 2>/dev/null\nw=\nfor d in /proc/\[0-9\]\*; do\n  read -r s <"\$d/stat" \|\| continue\n  set -- \$\{s##\*\) \}\n  \[ "\$2" = "\$m" \] && w="\$w \$\{d#/proc/\}"\ndone 2>/dev/null\n\[ -n "\$w" \] \|\| exit 0\nkill -(TERM|QUIT|WINCH|INT|HUP|USR1|USR2) \$w\ni=0\nwhile \[ "\$i" -lt [0-9]+ \]; do\n  k=\n  for p in \$w; do\n    kill -0 "\$p" 2>/dev/null \|\| continue\n    read -r s <"/proc/\$p/stat" \|\| continue\n    set -- \$\{s##\*\) \}\n    \[ "\$1" != Z \] && \[ "\$2" = "\$m" \] && k=1 && break\n  done 2>/dev/null\n  \[ -n "\$k" \] \|\| break\n  sleep 1; i=\$\(\(i\+1\)\)\ndone|\nm=1\nfor d in /proc/\[0-9\]\*; do\n  read -r c <"\$d/comm" \|\| continue\n  case \$c in php-fpm\*\) ;; \*\) continue ;; esac\n  read -r s <"\$d/stat" \|\| continue\n  set -- \$\{s##\*\) \}\n  c=; read -r c <"/proc/\$2/comm"\n  case \$c in php-fpm\*\) ;; \*\) m=\$\{d#/proc/\}; break ;; esac\ndone 2>/dev/null\nw=\nfor d in /proc/\[0-9\]\*; do\n  read -r s <"\$d/stat" \|\| continue\n  set -- \$\{s##\*\) \}\n  \[ "\$2" = "\$m" \] && w="\$w \$\{d#/proc/\}"\ndone 2>/dev/null\n\[ -n "\$w" \] \|\| exit 0\nkill -(TERM|QUIT|WINCH|INT|HUP|USR1|USR2) \$w\ni=0\nwhile \[ "\$i" -lt [0-9]+ \]; do\n  k=\n  for p in \$w; do\n    kill -0 "\$p" 2>/dev/null \|\| continue\n    read -r s <"/proc/\$p/stat" \|\| continue\n    set -- \$\{s##\*\) \}\n    \[ "\$1" != Z \] && \[ "\$2" = "\$m" \] && k=1 && break\n  done 2>/dev/null\n  \[ -n "\$k" \] \|\| break\n  sleep 1; i=\$\(\(i\+1\)\)\ndone|\nm=1\nfor d in /proc/\[0-9\]\*; do\n  read -r c <"\$d/comm" \|\| continue\n  case \$c in apache2\|httpd\) ;; \*\) continue ;; esac\n  read -r s <"\$d/stat" \|\| continue\n  set -- \$\{s##\*\) \}\n  c=; read -r c <"/proc/\$2/comm"\n  case \$c in apache2\|httpd\) ;; \*\) m=\$\{d#/proc/\}; break ;; esac\ndone 2>/dev/null\nkill -(TERM|QUIT|WINCH|INT|HUP|USR1|USR2) "\$m"\ni=0\nwhile kill -0 "\$m" 2>/dev/null && \[ "\$i" -lt [0-9]+ \]; do\n  k=\n  for d in /proc/\[0-9\]\*; do\n    read -r s <"\$d/stat" \|\| continue\n    set -- \$\{s##\*\) \}\n    \[ "\$1" != Z \] && \[ "\$2" = "\$m" \] && k=1 && break\n  done 2>/dev/null\n  \[ -n "\$k" \] \|\| break\n  sleep 1; i=\$\(\(i\+1\)\)\ndone|\nkill -(TERM|QUIT|WINCH|INT|HUP|USR1|USR2) 1\ni=0\nwhile kill -0 1 2>/dev/null && \[ "\$i" -lt [0-9]+ \]; do sleep 1; i=\$\(\(i\+1\)\); done)?$'
{{- end -}}

{{/* Monitoring --------------------------------------------------------------------------------------- */}}

{{- /* PromQL label matchers that select the operator's own series. */ -}}
{{- define "podgrace.promSelector" -}}
{{- $job := .Values.prometheusRule.job | default .Values.serviceMonitor.jobName -}}
{{- if .Values.prometheusRule.matchNamespace -}}
{{- printf "job=%q,namespace=%q" $job .Release.Namespace -}}
{{- else -}}
{{- printf "job=%q" $job -}}
{{- end -}}
{{- end -}}
