DKIM-Signature: a=rsa-sha256; bh=B5mSHQoB0lRBPHmKsPWQ1bzAS5AO85Wj+A4E1TqjBBM=;
 c=relaxed/relaxed; d=example.com;
 h=From:From:To:To:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:Reply-To:In-Reply-To:References:MIME-Version:MIME-Version:Content-Type:Content-Type:Content-Transfer-Encoding:Content-Transfer-Encoding:List-Id:List-Unsubscribe:List-Unsubscribe-Post;
 s=mg2026r; t=<T>; v=1; x=<X>;
 b=<B>
