package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFile writes text to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newCertificate returns a self-signed certificate and its private key, in
// PEM.
func newCertificate(t *testing.T, name string) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// TestNamedFiles: LoadAndCheck reads every file the configuration names
// and reports each that cannot be read or does not hold what it must, at
// its key's position; ReadFiles, which the agent uses, finds the same.
func TestNamedFiles(t *testing.T) {
	dir := t.TempDir()
	cert, key := newCertificate(t, "client")
	_, otherKey := newCertificate(t, "other")
	good := map[string]string{
		"pw":       writeFile(t, dir, "pw", "s3cret\n"),
		"ca":       writeFile(t, dir, "ca.pem", cert),
		"cert":     writeFile(t, dir, "cert.pem", cert),
		"key":      writeFile(t, dir, "key.pem", key),
		"empty":    writeFile(t, dir, "empty", "\r\n"),
		"garbage":  writeFile(t, dir, "garbage.pem", "not a certificate\n"),
		"badcert":  writeFile(t, dir, "bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
		"otherkey": writeFile(t, dir, "other.key", otherKey),
		"missing":  filepath.Join(dir, "missing"),
		"dir":      dir,
	}
	// doc is a configuration naming mqttPW, saslPW, ca, cert and key
	// (keys of good; "" leaves the key out).
	doc := func(mqttPW, saslPW, ca, cert, key string) string {
		var b strings.Builder
		b.WriteString("gateway_id: g\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: a/#}]\n")
		if mqttPW != "" {
			b.WriteString("  username: u\n  password_file: " + good[mqttPW] + "\n")
		}
		b.WriteString("forward:\n  routes: [{match: a/#, topic: t}]\n  kafka:\n    brokers: [127.0.0.1:9092]\n")
		if saslPW != "" {
			b.WriteString("    sasl:\n      mechanism: SCRAM-SHA-512\n      username: u\n      password_file: " + good[saslPW] + "\n")
		}
		b.WriteString("    tls:\n")
		for _, kv := range [][2]string{{"ca_file", ca}, {"cert_file", cert}, {"key_file", key}} {
			if kv[1] != "" {
				b.WriteString("      " + kv[0] + ": " + good[kv[1]] + "\n")
			}
		}
		return b.String()
	}
	t.Run("good", func(t *testing.T) {
		path := writeFile(t, t.TempDir(), "ferry.yaml", doc("pw", "pw", "ca", "cert", "key"))
		c, err := LoadAndCheck(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := c.ReadFiles()
		if err != nil {
			t.Fatal(err)
		}
		if f.MQTT[0].Password != "s3cret" || f.KafkaPassword != "s3cret" || f.KafkaRootCAs == nil ||
			f.KafkaCertificate == nil || len(f.KafkaCertificate.Certificate) != 1 {
			t.Errorf("files: %+v", f)
		}
	})
	for _, tc := range []struct {
		name                          string
		mqttPW, saslPW, ca, cert, key string
		want                          string // after "ferry.yaml:"
	}{
		{name: "missing mqtt password", mqttPW: "missing",
			want: "6:18: mqtt.password_file: cannot read " + good["missing"] + ": no such file or directory"},
		{name: "directory as sasl password", saslPW: "dir",
			want: "12:22: forward.kafka.sasl.password_file: " + dir + " is a directory, not a file"},
		{name: "empty password", mqttPW: "empty",
			want: "6:18: mqtt.password_file: " + good["empty"] + " is empty; it must hold the password"},
		{name: "CA file not PEM", ca: "garbage",
			want: "10:16: forward.kafka.tls.ca_file: " + good["garbage"] + " holds no PEM certificate"},
		{name: "CA file holding a key", ca: "key",
			want: "10:16: forward.kafka.tls.ca_file: " + good["key"] + " holds no PEM certificate (it holds PRIVATE KEY)"},
		{name: "CA certificate that does not parse", ca: "badcert",
			want: "10:16: forward.kafka.tls.ca_file: " + good["badcert"] + ": certificate 1 does not parse: x509: malformed certificate"},
		{name: "missing CA", ca: "missing",
			want: "10:16: forward.kafka.tls.ca_file: cannot read " + good["missing"] + ": no such file or directory"},
		{name: "client certificate not PEM", cert: "garbage", key: "key",
			want: "10:18: forward.kafka.tls.cert_file: " + good["garbage"] + " holds no PEM certificate"},
		{name: "missing key", cert: "cert", key: "missing",
			want: "11:17: forward.kafka.tls.key_file: cannot read " + good["missing"] + ": no such file or directory"},
		{name: "key of another certificate", cert: "cert", key: "otherkey",
			want: "11:17: forward.kafka.tls.key_file: " + good["otherkey"] + " is not the key of cert_file " + good["cert"] + ": tls: private key does not match public key"},
		{name: "certificate as key", cert: "cert", key: "cert",
			want: "11:17: forward.kafka.tls.key_file: " + good["cert"] + " is not the key of cert_file " + good["cert"] + ": tls: found a certificate rather than a key in the PEM for the private key"},
		{name: "two problems", mqttPW: "empty", ca: "dir",
			want: "6:18: mqtt.password_file: " + good["empty"] + " is empty; it must hold the password\n" +
				"ferry.yaml:12:16: forward.kafka.tls.ca_file: " + dir + " is a directory, not a file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Chdir(t.TempDir())
			writeFile(t, ".", "ferry.yaml", doc(tc.mqttPW, tc.saslPW, tc.ca, tc.cert, tc.key))
			_, err := LoadAndCheck("ferry.yaml")
			if err == nil || err.Error() != "ferry.yaml:"+tc.want {
				t.Errorf("LoadAndCheck:\n%v\nwant:\nferry.yaml:%s", err, tc.want)
			}
			// Load reads no file but the configuration; ReadFiles finds
			// what LoadAndCheck found, by key.
			c, err := Load("ferry.yaml")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			_, err = c.ReadFiles()
			for _, line := range strings.Split(tc.want, "\n") {
				_, keyAndMsg, _ := strings.Cut(strings.TrimPrefix(line, "ferry.yaml:"), ": ")
				if err == nil || !strings.Contains(err.Error(), keyAndMsg) {
					t.Errorf("ReadFiles: %v\nwant it to hold %q", err, keyAndMsg)
				}
			}
		})
	}
}
