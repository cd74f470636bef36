package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Environment variables that point the tests at a real Kafka broker, as
// scripts/kafka-test-broker prints them. Without EnvKafka the tests use
// kfake.
const (
	EnvKafka         = "FERRY_TEST_KAFKA"          // PLAINTEXT host:port
	EnvKafkaListener = "FERRY_TEST_KAFKA_LISTENER" // plaintext (default), sasl or tls
)

// realKafka is a broker started outside the test (scripts/kafka-test-broker).
type realKafka struct {
	listener string // plaintext, sasl, tls
	addr     string
	version  string
	pid      int
	opts     []kgo.Opt // security options for clients
	yaml     string    // the same, as ferry configuration
	user     string    // the SASL user ("" on other listeners)
	mu       sync.Mutex
	frozen   bool
}

// UsingRealKafka reports whether the environment names a real broker.
func UsingRealKafka() bool { return os.Getenv(EnvKafka) != "" }

// ConnectRealKafka describes the real broker the environment names, on the
// listener EnvKafkaListener selects.
func ConnectRealKafka() (*Kafka, error) {
	env := func(k string) string { return os.Getenv("FERRY_TEST_KAFKA" + k) }
	r := &realKafka{listener: os.Getenv(EnvKafkaListener), version: env("_VERSION")}
	if r.listener == "" {
		r.listener = "plaintext"
	}
	r.pid, _ = strconv.Atoi(env("_PID"))
	switch r.listener {
	case "plaintext":
		r.addr = env("")
	case "sasl":
		r.addr = env("_SASL")
		if env("_SASL_MECHANISM") != "SCRAM-SHA-512" {
			return nil, fmt.Errorf("real Kafka: SASL mechanism %q: the tests speak SCRAM-SHA-512", env("_SASL_MECHANISM"))
		}
		user, pass := env("_SASL_USER"), env("_SASL_PASSWORD")
		r.user = user
		r.opts = append(r.opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
		// ferry reads the password from the environment, as an operator's
		// config would.
		r.yaml = fmt.Sprintf("    sasl:\n      mechanism: SCRAM-SHA-512\n      username: %s\n      password: ${FERRY_TEST_KAFKA_SASL_PASSWORD}\n", user)
	case "tls":
		r.addr = env("_TLS")
		ca, cert, key := env("_TLS_CA"), env("_TLS_CERT"), env("_TLS_KEY")
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("real Kafka: CA: %w", err)
		}
		tc := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
		tc.RootCAs.AppendCertsFromPEM(pem)
		r.yaml = fmt.Sprintf("    tls:\n      ca_file: %q\n", ca)
		if cert != "" {
			c, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("real Kafka: client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
			r.yaml += fmt.Sprintf("      cert_file: %q\n      key_file: %q\n", cert, key)
		}
		r.opts = append(r.opts, kgo.DialTLSConfig(tc))
	default:
		return nil, fmt.Errorf("real Kafka: %s=%q: want plaintext, sasl or tls", EnvKafkaListener, r.listener)
	}
	if r.addr == "" {
		return nil, fmt.Errorf("real Kafka: no address for the %s listener in the environment", r.listener)
	}
	return &Kafka{real: r}, nil
}

func (r *realKafka) setReachable(up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pid <= 0 || r.frozen == !up {
		return
	}
	sig := syscall.SIGCONT
	if !up {
		sig = syscall.SIGSTOP
	}
	if err := syscall.Kill(r.pid, sig); err == nil {
		r.frozen = !up
	}
}

// String names the cluster for test logs: "kfake" or the real broker's
// version, address and security.
func (k *Kafka) String() string {
	if k.real == nil {
		return "kfake (in process) at " + strings.Join(k.Brokers(), ",")
	}
	return fmt.Sprintf("Apache Kafka %s at %s (%s)", k.real.version, k.real.addr, k.real.listener)
}

// IsReal reports whether k is a real broker rather than kfake.
func (k *Kafka) IsReal() bool { return k.real != nil }

// Listener is "plaintext" for kfake, else the real broker's listener.
func (k *Kafka) Listener() string {
	if k.real == nil {
		return "plaintext"
	}
	return k.real.listener
}

// ClientOpts are the options a franz-go client needs to reach k: seed
// brokers and, for a real broker, its security.
func (k *Kafka) ClientOpts() []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(k.Brokers()...)}
	if k.real != nil {
		opts = append(opts, k.real.opts...)
	}
	return opts
}

// FerryYAML is the forward.kafka section of a ferry configuration that
// reaches k, indented for its place under "  kafka:".
func (k *Kafka) FerryYAML() string {
	y := fmt.Sprintf("    brokers: [%s]\n", strings.Join(k.Brokers(), ", "))
	if k.real != nil {
		y += k.real.yaml
	}
	return y
}

var topicSeq atomic.Int64

// UniqueTopic returns a topic name starting with prefix that no other test
// uses: tests on a real, shared broker must not read each other's records.
func UniqueTopic(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano(), topicSeq.Add(1))
}

// CreateTopic creates topic name with DefaultPartitions partitions.
func (k *Kafka) CreateTopic(ctx context.Context, name string) error {
	return k.CreateTopicWith(ctx, name, nil)
}

// CreateTopicWith creates topic name with DefaultPartitions partitions and
// the given topic configs (e.g. max.message.bytes).
func (k *Kafka) CreateTopicWith(ctx context.Context, name string, configs map[string]string) error {
	cl, err := kgo.NewClient(k.ClientOpts()...)
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic, t.NumPartitions, t.ReplicationFactor = name, DefaultPartitions, 1
	for k, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = k, kmsg.StringPtr(v)
		t.Configs = append(t.Configs, c)
	}
	req.Topics = append(req.Topics, t)
	req.TimeoutMillis = 10000
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create topic %s on %s: %w", name, k, err)
	}
	if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s on %s: %w", name, k, err)
	}
	return nil
}

// DenyTopic makes the real broker refuse topic to the SASL user on the
// ACL operation op (kmsg.ACLOperationWrite: Kafka refuses its produce
// requests; kmsg.ACLOperationAll: also its metadata requests), and keeps
// the topic open to every other principal. scripts/kafka-test-broker runs
// an authorizer that lets everyone use a resource without ACLs, and its
// SCRAM user is no super user. It fails on kfake and on the other
// listeners, whose principals the tests do not know.
func (k *Kafka) DenyTopic(ctx context.Context, topic string, op kmsg.ACLOperation) error {
	if k.real == nil || k.real.user == "" {
		return fmt.Errorf("deny topic %s: needs the real broker's SASL listener (%s=sasl)", topic, EnvKafkaListener)
	}
	cl, err := kgo.NewClient(k.ClientOpts()...)
	if err != nil {
		return err
	}
	defer cl.Close()
	acl := func(principal string, op kmsg.ACLOperation, perm kmsg.ACLPermissionType) kmsg.CreateACLsRequestCreation {
		c := kmsg.NewCreateACLsRequestCreation()
		c.ResourceType, c.ResourceName, c.ResourcePatternType = kmsg.ACLResourceTypeTopic, topic, kmsg.ACLResourcePatternTypeLiteral
		c.Principal, c.Host, c.Operation, c.PermissionType = principal, "*", op, perm
		return c
	}
	req := kmsg.NewPtrCreateACLsRequest()
	req.Creations = []kmsg.CreateACLsRequestCreation{
		acl("User:*", kmsg.ACLOperationAll, kmsg.ACLPermissionTypeAllow),
		acl("User:"+k.real.user, op, kmsg.ACLPermissionTypeDeny),
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("deny topic %s on %s: %w", topic, k, err)
	}
	for _, r := range resp.Results {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			return fmt.Errorf("deny topic %s on %s: %w", topic, k, err)
		}
	}
	// The controller committed them; the broker's authorizer has them once
	// it shows them.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		d := kmsg.NewPtrDescribeACLsRequest()
		d.ResourceType, d.ResourceName, d.ResourcePatternType = kmsg.ACLResourceTypeTopic, &topic, kmsg.ACLResourcePatternTypeLiteral
		d.Operation, d.PermissionType = kmsg.ACLOperationAny, kmsg.ACLPermissionTypeAny
		dr, err := d.RequestWith(ctx, cl)
		if err == nil {
			err = kerr.ErrorForCode(dr.ErrorCode)
		}
		if err != nil {
			return fmt.Errorf("deny topic %s on %s: describe ACLs: %w", topic, k, err)
		}
		if len(dr.Resources) == 1 && len(dr.Resources[0].ACLs) == len(req.Creations) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deny topic %s on %s: the ACLs did not show: %w", topic, k, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
